"""One table of decoders (flythinker.choices.DECODER_TABLE): the model's registry, the decoding
package's dispatch, the command line's choices and the server's modes are all derived from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flythinker.choices import DECODER_TABLE, DecodeMode, ServeMode
from flythinker.errors import UserError


def test_every_list_of_modes_is_the_table():
    import flythinker.decoding as decoding
    from flythinker.model import DECODERS, _registries

    _registries()
    names = [d.name for d in DECODER_TABLE]
    assert list(decoding.MODES) == names and list(DECODERS) == names
    assert [m.value for m in DecodeMode] == names
    assert [m.value for m in ServeMode] == ["auto", *(d.name for d in DECODER_TABLE if d.server)]


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
