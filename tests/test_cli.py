"""Command-line conventions: --version, completion, choices listed and checked, bundled configs by name."""

from __future__ import annotations

import pytest

from flythinker.cli import main


def _run(args):
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None)


def test_version_and_completion_options(capsys):
    _run(["--version"])
    assert capsys.readouterr().out.startswith("flythinker ")
    _run(["--help"])
    assert "--install-completion" in capsys.readouterr().out


def test_the_cli_choices_are_the_codes_own_lists():
    from flythinker import choices as C
    from flythinker.data.prompts import RETRIEVALS
    from flythinker.decoding import MODES
    from flythinker.decoding.concurrent import BACKENDS
    from flythinker.loading import DTYPES

    names = lambda e: tuple(m.value for m in e)  # noqa: E731
    assert names(C.Retrieval) == RETRIEVALS and names(C.Backend) == BACKENDS and names(C.Dtype) == tuple(DTYPES)
    assert names(C.DecodeMode) == MODES


def test_a_value_outside_the_choices_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "m", "--data", "d", "--out", "o", "--mode", "fast"])
    err = capsys.readouterr()
    assert e.value.code == 2 and "sequential" in err.out + err.err and "concurrent" in err.out + err.err


def test_bundled_configs_are_listed_and_found_by_name(tmp_path, capsys, monkeypatch):
    from flythinker.bundled import bundled_configs, resolve_config
    from flythinker.errors import UserError

    main(["configs", "list"])
    assert "smollm2_flythinker" in capsys.readouterr().out
    assert resolve_config("tiny_flythinker") == bundled_configs()["tiny_flythinker"]
    assert resolve_config("tiny_flythinker.yaml") == bundled_configs()["tiny_flythinker"]
    with pytest.raises(UserError, match="no such config file, nor a bundled config"):
        resolve_config("tiny_flythinkr")
    monkeypatch.chdir(tmp_path.parent)  # the packaged config's data path is relative to the checkout
    monkeypatch.chdir(bundled_configs()["tiny_flythinker"].parents[3])
    main(
        [
            "train",
            "tiny_flythinker",
            "train.epochs=1",
            "data.limit_train=4",
            "data.limit_dev=2",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ]
    )
    assert (tmp_path / "run" / "final" / "flythinker.json").is_file()
