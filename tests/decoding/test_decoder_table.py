"""One table of decoders (flythinker.choices.DECODER_TABLE): the dispatch of FlyThinker.generate,
the command line's choices, the server's modes and steppers, and the benchmark are derived from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flythinker.choices import DECODER_TABLE, DecodeMode, ServeMode
from flythinker.errors import UserError


def test_every_list_of_modes_is_the_table():
    import flythinker.decoding as decoding

    names = [d.name for d in DECODER_TABLE]
    assert list(decoding.MODES) == names
    assert [m.value for m in DecodeMode] == names
    assert [m.value for m in ServeMode] == ["auto", *(d.name for d in DECODER_TABLE if d.server)]


def test_every_entry_point_names_a_decoder_with_the_one_signature():
    import inspect

    from flythinker.choices import DECODE_ENTRY, VARIANT_ENTRIES, resolve

    shared = ["model", "input_ids", "attention_mask", "max_new_tokens", "sampling", "eos_token_id", "pad_token_id"]
    shared += ["streamer", "backend", "reasoner_prompt"]
    for d in DECODER_TABLE:
        fn = resolve(d.entry)
        assert list(inspect.signature(fn).parameters) == shared, d.name
    assert callable(resolve(DECODE_ENTRY))
    for name, entry in VARIANT_ENTRIES.items():
        assert resolve(entry).variant == name


def test_the_server_batches_exactly_the_modes_the_table_says():
    from flythinker.decoding import make_stepper
    from flythinker.tiny import llama_config, random_pair

    model = random_pair(llama_config(32, 1, 2, 1, 64, 97, eos=2, pad=0), llama_config(32, 1, 2, 1, 64, 97), 0.5)
    for d in DECODER_TABLE:
        if d.server and d.name != "shared_base":  # shared_base needs one base: its own tests
            make_stepper(model, d.name).close()
        elif not d.server:
            with pytest.raises(UserError, match="running batch"):
                make_stepper(model, d.name)


def test_a_backend_for_a_mode_that_takes_none_is_refused():
    import torch

    from flythinker.tiny import llama_config, random_pair

    model = random_pair(llama_config(32, 1, 2, 1, 64, 97, eos=2, pad=0), llama_config(32, 1, 2, 1, 64, 97), 0.5)
    for d in DECODER_TABLE:
        if not d.backend:
            with pytest.raises(UserError, match="takes no backend"):
                model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, mode=d.name, backend="threads")


def test_the_server_refuses_a_mode_it_cannot_batch_and_names_those_it_can():
    from flythinker.apps.serve.engine import Engine

    tok = SimpleNamespace(eos_token_id=2, pad_token_id=0, convert_tokens_to_ids=lambda t: None)
    unbatched = [d.name for d in DECODER_TABLE if not d.server]
    assert unbatched  # captured: static caches, no rows joining between steps
    for name in unbatched:
        with pytest.raises(UserError, match="shared_base"):
            Engine(None, tok, mode=name, make_batch=lambda: None)


def test_a_mode_outside_the_table_is_refused_by_the_model():
    import torch

    from flythinker.tiny import llama_config, random_pair

    model = random_pair(llama_config(32, 1, 2, 1, 64, 97, eos=2, pad=0), llama_config(32, 1, 2, 1, 64, 97), 0.5)
    with pytest.raises(UserError, match="captured"):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, mode="fast")
