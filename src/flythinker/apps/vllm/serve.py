"""``flythinker serve --engine vllm``: our server (profile store, keys, limits, OpenAI surface)
in front of vLLM's async engine, one engine for every user.

:class:`VllmEngine` has the interface of :class:`flythinker.apps.serve.engine.Engine`:
``submit`` returns a :class:`~flythinker.apps.serve.engine.Request` whose tokens stream as vLLM
decodes them; a request whose client went away is aborted in vLLM. vLLM's engine lives on an
event loop of its own, in a thread, so the server's routes never wait on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from pathlib import Path

from flythinker.apps.serve.engine import QueueFull, Request, check_sampling
from flythinker.errors import UserError


def is_exported(folder: Path) -> bool:
    """A folder ``flythinker export vllm`` wrote (its ``config.json`` is a FlyThinker one)."""
    from flythinker.apps.vllm.config import MODEL_TYPE

    cfg = Path(folder) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == MODEL_TYPE
    except json.JSONDecodeError:
        return False


def exported_folder(model: Path, cache: Path | None = None) -> Path:
    """``model`` if it is already exported; else its export under the user cache, written once
    per version of the folder (keyed by its path and its files' sizes and times)."""
    from flythinker.apps.vllm.export import export_vllm
    from flythinker.auto import is_flythinker_folder

    model = Path(model).expanduser().resolve()
    if is_exported(model):
        return model
    if not is_flythinker_folder(model):
        raise UserError(f"{model}: --engine vllm serves a FlyThinker folder or one `flythinker export vllm` wrote")
    stamp = [str(model)] + [
        f"{p.relative_to(model)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(model.rglob("*"))
        if p.is_file()
    ]
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    out = (cache or Path("~/.cache/flythinker/vllm").expanduser()) / f"{model.name}-{key}"
    if not is_exported(out):
        print(f"exporting {model} for vLLM: {out}")
        export_vllm(model, out, overwrite=True)
    return out


CPU_KV_CACHE_BYTES = 2 << 30


def cpu_defaults(engine_args: dict) -> dict:
    """On a machine without a GPU, a KV cache of 2 GiB unless told otherwise: vLLM's CPU build
    otherwise reserves 92% of the machine's memory (``gpu_memory_utilization``) and refuses to
    start when that much is not free."""
    import torch

    if torch.cuda.is_available() or {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(engine_args):
        return engine_args
    return {**engine_args, "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}


class VllmEngine:
    """vLLM's ``AsyncLLM`` over an exported folder, behind the server's engine interface."""

    def __init__(self, folder: Path, max_batch: int = 8, max_queue: int = 64, dtype: str | None = None, **engine_args):
        import torch
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.max_batch, self.max_queue, self.mode = max_batch, max_queue, "vllm"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="flythinker-vllm", daemon=True)
        self.thread.start()
        engine_args = cpu_defaults(engine_args)
        args = AsyncEngineArgs(model=str(folder), max_num_seqs=max_batch, dtype=dtype or "auto", **engine_args)

        async def start():
            return AsyncLLM.from_engine_args(args)

        self.llm = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.inflight = 0
        self.cpu = not torch.cuda.is_available()
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "peak_inflight": 0}

    def submit(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Request:
        check_sampling(temperature, top_p)
        if seed is not None and self.cpu:  # vLLM 0.32's CPU build: "CPU Generator does not use offset"
            raise UserError("seed: vLLM's CPU build cannot seed one request (serve without --engine vllm to seed)")
        with self.lock:
            if self.inflight >= self.max_batch + self.max_queue:
                raise QueueFull()
            self.inflight += 1
            self.stats["requests"] += 1
            self.stats["peak_inflight"] = max(self.stats["peak_inflight"], self.inflight)
        req = Request(list(prompt_ids), max_tokens, temperature, top_p, seed)
        asyncio.run_coroutine_threadsafe(self._run(req), self.loop)
        return req

    async def _run(self, req: Request) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        rid, reason = uuid.uuid4().hex, "stop"
        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=req.prompt_ids), params, rid):
                for token in out.outputs[0].token_ids:
                    req.n_tokens += 1
                    req.put(token)
                if req.cancelled.is_set():
                    await self.llm.abort(rid)
                    reason = "cancelled"
                    break
                if out.finished:
                    reason = out.outputs[0].finish_reason or "stop"
            req.end(reason)
        except Exception as e:  # the request's reader raises it
            req.put(RuntimeError(f"decoding failed: {e}"))
        finally:
            with self.lock:
                self.inflight -= 1

    def close(self, timeout: float = 30.0) -> None:
        """Stop vLLM's engine (its processes end with it) and then its loop."""

        async def shutdown():
            self.llm.shutdown(timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
