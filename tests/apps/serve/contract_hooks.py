"""Schemathesis hooks of the contract test (loaded through SCHEMATHESIS_HOOKS).

One rule of the chat route is not a JSON schema: the last message must be the user's (it is the
query). A schema-valid body that breaks it gets that 400 and nothing else: this hook drops exactly
that failure, for exactly those bodies; every other refusal of a schema-valid body still fails.
"""

import json

import schemathesis

RULE = "messages: the last message must be the user's"


def _breaks_the_rule(body) -> bool:
    messages = body.get("messages") if isinstance(body, dict) else None  # a negative body: anything
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and (messages[-1].get("role") != "user")
    )


@schemathesis.hook("filter_body").apply_to(path="/v1/chat/completions")
def last_message_is_the_users(context, body):
    return not _breaks_the_rule(body)  # the fuzzing phase keeps to the rule


@schemathesis.hook("filter_failure").apply_to(path="/v1/chat/completions")
def the_documented_refusal(context, failure, case, response):
    """The coverage phase builds its bodies without the filter: its refusal by this rule is kept out."""
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return True
    refused = response.status_code == 400 and error.get("message") == RULE
    return not (refused and _breaks_the_rule(case.body))


@schemathesis.hook("filter_failure")
def the_coverage_phases_own_bug(context, failure, case, response):
    """Schemathesis' coverage phase finds no positive body for a closed object with a ``$ref``
    property (our profile routes: ``items`` of ``Item``) and sends ``0`` as "schema-valid"
    (schemathesis/schemathesis#4499): that one rejection is dropped, nothing else."""
    positive_non_object = type(failure).__name__ == "RejectedPositiveData" and not isinstance(case.body, dict)
    return not (positive_non_object and case.meta is not None and case.meta.phase.name == "coverage")
