"""The `flythinker` command: one sub-command per module, each a thin ``*_command`` function.

Command modules import torch and friends inside their functions, so ``flythinker --help``
stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from flythinker.errors import UserError

app = typer.Typer(
    name="flythinker",
    help="Personalized long-form generation with on-the-fly latent reasoning (FlyThinker).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Side-by-side benchmarks (decoding, training).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
configs_app = typer.Typer(help="The configs shipped with the package.", no_args_is_help=True)
app.add_typer(configs_app, name="configs")
export_app = typer.Typer(help="Write a trained model for another engine.", no_args_is_help=True)
app.add_typer(export_app, name="export")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"flythinker {version('flythinker')}")
        except PackageNotFoundError:  # run from a checkout without installing it
            print("flythinker (not installed: run from a source tree)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Personalized long-form generation with on-the-fly latent reasoning (FlyThinker)."""


# --- sub-commands (one line each; the function lives next to the code it drives) -------
from flythinker.apps.bench.decode import bench_decode_command  # noqa: E402
from flythinker.apps.bench.serve import bench_serve_command  # noqa: E402
from flythinker.apps.bench.train import bench_train_command  # noqa: E402
from flythinker.apps.bench.vllm import bench_vllm_command  # noqa: E402
from flythinker.apps.demo import demo_command  # noqa: E402
from flythinker.apps.experiment.run import experiment_command  # noqa: E402
from flythinker.apps.generate import generate_command  # noqa: E402
from flythinker.apps.models import models_app  # noqa: E402
from flythinker.apps.probe import probe_command  # noqa: E402
from flythinker.apps.serve.command import serve_command  # noqa: E402
from flythinker.apps.vllm.export import export_vllm_command  # noqa: E402
from flythinker.bundled import configs_list_command  # noqa: E402
from flythinker.evaluate.command import evaluate_command  # noqa: E402
from flythinker.train.command import train_command  # noqa: E402

app.command("demo")(demo_command)
app.command("evaluate")(evaluate_command)
app.command("experiment")(experiment_command)
app.command("generate")(generate_command)
app.command("probe")(probe_command)
app.command("serve")(serve_command)
app.command("train")(train_command)
app.add_typer(models_app, name="models")
configs_app.command("list")(configs_list_command)
bench_app.command("train")(bench_train_command)
bench_app.command("decode")(bench_decode_command)
bench_app.command("serve")(bench_serve_command)
bench_app.command("vllm")(bench_vllm_command)
export_app.command("vllm")(export_vllm_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # models and tokenizers load from local folders only: no hub call, even a metadata check
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
        os.environ["FLYTHINKER_DEBUG"] = "1"
    try:
        app(args=argv, prog_name="flythinker", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like (click's, or the copy newer typer vendors)
        kinds = {c.__name__ for c in type(e).__mro__}
        if "ClickException" in kinds:  # one line, as every other refusal of this command
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            print(f"error: {e.format_message().replace('Value error, ', '')}{hint}", file=sys.stderr)
            sys.exit(2)
        if "Abort" in kinds:
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
