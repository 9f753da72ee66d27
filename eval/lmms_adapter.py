"""lmms-eval adapter: ``ArrCocLlava`` (or a token-reduction baseline on it) as the lmms-eval model ``arr_coc``.

lmms-eval (Zhang et al. 2024, "LMMs-Eval") runs a model class through two calls on lists of ``Instance`` requests:
``generate_until`` (``req.args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)`` → one string each) and
``loglikelihood`` (``req.args = (context, doc_to_target, doc_to_visual, doc_id, task, split)`` → ``(logprob,
is_greedy)`` each). :class:`ArrCocLmms` implements both (``generate_until_multi_round`` is not supported).

Use (lmms-eval installed, e.g. ``pip install lmms-eval``)::

    python -m eval.lmms_adapter --model arr_coc --model_args checkpoint=runs/bench,method=arr_coc \\
        --tasks vqav2_val_lite --batch_size 8
    # after the entry point below is declared and the repo root is importable:
    lmms_eval --model arr_coc --model_args checkpoint=runs/bench,method=visionzip,token_fraction=0.25 --tasks ...

Registration: lmms-eval >= 0.7 resolves models through ``ModelManifest`` entries, built in or from the Python
entry-point group ``lmms_eval.models``; :func:`lmms_manifest` is that entry point's target
(``arr_coc = "eval.lmms_adapter:lmms_manifest"``), and :func:`register` adds the manifest at run time (what
``python -m eval.lmms_adapter`` does before handing over to lmms-eval's CLI). Older lmms-eval versions used the
``register_model`` decorator, which :func:`register` also calls when it exists.

Without lmms-eval the module still imports (``HAS_LMMS_EVAL`` is False) and the class implements the same documented
interface on plain objects with ``.args``, so it can be tested and used without the package.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from typing import Any, Sequence

import torch

from eval.baselines import create_method

try:  # optional dependency
    from lmms_eval.api.model import lmms as _LmmsBase

    HAS_LMMS_EVAL = True
except ImportError:  # pragma: no cover - depends on the environment
    _LmmsBase = object
    HAS_LMMS_EVAL = False

__all__ = ["ArrCocLmms", "HAS_LMMS_EVAL", "lmms_manifest", "register"]

_CLASS_PATH = "eval.lmms_adapter.ArrCocLmms"


def _first_image(visuals: Any, where: str):
    """The first PIL image of a ``doc_to_visual`` result (ARR-COC takes one image per question)."""
    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    flat = []
    for v in items:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    for v in flat:
        if hasattr(v, "convert") and hasattr(v, "size"):
            from models.processing import to_rgb

            return to_rgb(v)
    raise ValueError(f"{where}: ArrCocLlava needs an image, but doc_to_visual gave {[type(v).__name__ for v in flat]}")


class ArrCocLmms(_LmmsBase):
    """lmms-eval model ``arr_coc``.

    Args:
        checkpoint: Checkpoint folder or run directory of ``training.train`` (``None``: random ``model_preset``).
        model_preset: Preset without a checkpoint (smoke tests only).
        method: ``arr_coc`` or a baseline of :mod:`eval.baselines`.
        token_fraction: Visual tokens as a fraction of the full-token count (``None``: the trained budget).
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK`` in each process of a multi-process run) or
            ``cuda:N``.
        batch_size: Requests per ``generate`` call.
        max_new_tokens: Default generation length when a task gives none.
        model: An already built ``ArrCocLlava`` (with ``processor``), instead of loading one.
        processor: Its processor.
        **kwargs: Other lmms-eval arguments; a value that is neither known nor ``None`` raises ``ValueError``.
    """

    is_simple = True

    def __init__(self, checkpoint: str | None = None, model_preset: str = "tiny", method: str = "arr_coc",
                 token_fraction: float | str | None = None, device: str = "auto", batch_size: int | str = 1,
                 max_new_tokens: int | str = 16, model: Any = None, processor: Any = None, **kwargs: Any):
        if HAS_LMMS_EVAL:
            super().__init__()
        else:
            self._rank, self._world_size, self.task_dict = 0, 1, {}
        # lmms-eval passes max_length, device_map etc. to every model; only refuse what would change the result.
        ignored = {"max_length", "device_map", "trust_remote_code", "use_cache", "attn_implementation"}
        unknown = sorted(k for k, v in kwargs.items() if k not in ignored and v is not None)
        if unknown:
            raise ValueError(f"unknown arr_coc model argument(s) {unknown}")
        from eval.run_eval import EvalCfg, _device, build_eval_model

        if model is None:
            cfg = EvalCfg(checkpoint=checkpoint, model_preset=model_preset)
            model, processor, _ = build_eval_model(cfg)
        elif processor is None:
            raise ValueError("pass the model's processor along with the model")
        self._device = _device(str(device))
        if self._device.type == "cuda" and self._device.index is None:
            # An unindexed "cuda" follows the current device, which lmms-eval's Accelerator() later sets to
            # cuda:LOCAL_RANK: fix the index now (each process of accelerate/torchrun takes its own GPU).
            multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
            self._device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if multi
                                        else torch.cuda.current_device())
        self.model = model.to(self._device).eval()
        frac = None if token_fraction in (None, "", "None", "null") else float(token_fraction)
        self.method = create_method(method, self.model, frac)
        self.processor = copy.copy(processor)
        self.processor.budget = self.method.placeholders
        self._warned_settings: set[str] = set()
        self._batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if self._batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")

    # -- lmms-eval plumbing ------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return getattr(self, "_rank", 0)

    @property
    def world_size(self) -> int:
        return getattr(self, "_world_size", 1)

    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _image(self, doc_to_visual: Any, doc_id: int, task: str, split: str):
        return _first_image(doc_to_visual(self._doc(task, split, doc_id)), f"{task}/{split} doc {doc_id}")

    def _inputs(self, images: list, contexts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.processor(images, contexts)
        return {k: v.to(self._device) for k, v in batch.items()}

    # -- the interface -----------------------------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """Greedy (or the task's sampling) continuations, cut at the first ``until`` string; one per request."""
        from tqdm.auto import tqdm

        out: list[str] = [""] * len(requests)
        args = [r.args for r in requests]
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="arr_coc generate")
        for start in range(0, len(args), self._batch_size):
            chunk = list(range(start, min(start + self._batch_size, len(args))))
            # One generate() call per batch needs one set of generation settings: split where they differ.
            groups: dict[str, list[int]] = {}
            for i in chunk:
                groups.setdefault(repr(sorted((args[i][1] or {}).items())), []).append(i)
            for idx in groups.values():
                gen = dict(args[idx[0]][1] or {})
                until = gen.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                kw = {"max_new_tokens": int(gen.pop("max_new_tokens", self.max_new_tokens)), "num_beams": 1,
                      "eos_token_id": self.processor.tokenizer.eos_token_id}
                temp = float(gen.pop("temperature", 0) or 0)
                kw["do_sample"] = temp > 0
                if temp > 0:
                    kw["temperature"] = temp
                kw.update(self._other_generation_settings(gen, temp > 0))
                images = [self._image(args[i][2], args[i][3], args[i][4], args[i][5]) for i in idx]
                batch = self._inputs(images, [str(args[i][0]) for i in idx])
                res = self.method.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                           query_input_ids=batch["query_input_ids"],
                                           query_attention_mask=batch["query_attention_mask"], **kw)
                for i, text in zip(idx, self.processor.batch_decode(res.sequences.cpu())):
                    for stop in until:
                        if stop and stop in text:
                            text = text.split(stop, 1)[0]
                    out[i] = text
                    cache = getattr(self, "cache_hook", None)
                    if cache is not None:
                        cache.add_partial("generate_until", (args[i][0], args[i][1]), text)
            bar.update(len(chunk))
        bar.close()
        return out

    def _other_generation_settings(self, gen: dict[str, Any], sampling: bool) -> dict[str, Any]:
        """A task's settings beyond until/max_new_tokens/temperature: one beam only (``ValueError`` otherwise, since
        beam search would change the answers), ``do_sample`` follows the temperature (as in lmms-eval's own model
        classes), ``top_p``/``top_k`` apply when sampling; anything else is named in a one-time warning."""
        gen = dict(gen)
        beams = gen.pop("num_beams", 1)
        if beams not in (None, 1):
            raise ValueError(f"arr_coc generates with one beam, but the task asks for num_beams={beams!r}")
        gen.pop("do_sample", None)
        kw = {}
        for key in ("top_p", "top_k"):
            v = gen.pop(key, None)
            if sampling and v is not None:
                kw[key] = v
        ignored = sorted(set(gen) - self._warned_settings)
        if ignored:
            self._warned_settings.update(ignored)
            warnings.warn(f"arr_coc ignores the generation setting(s) {ignored} (values {[gen[k] for k in ignored]})",
                          stacklevel=3)
        return kw

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities given image + prompt, and whether greedy decoding
        reproduces it; one request at a time."""
        from models.processing import pad_sequences

        res: list[tuple[float, bool]] = []
        tok = self.processor.tokenizer
        for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            cont = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            image = self._image(doc_to_visual, doc_id, task, split)
            prompt = self.processor.encode_prompt(str(context))
            cont_ids = tok(str(cont), add_special_tokens=False)["input_ids"]
            if not cont_ids:
                raise ValueError(f"{task}/{split} doc {doc_id}: the continuation {cont!r} has no tokens")
            ids, mask = pad_sequences([prompt + list(cont_ids)], int(tok.pad_token_id), "right")
            q_ids, q_mask = self.processor.encode_queries([str(context)])
            pixels = self.processor.preprocess_images([image])
            dev = self._device
            logits = self.method.logits(pixels.to(dev), ids.to(dev), mask.long().to(dev), query_input_ids=q_ids.to(dev),
                                        query_attention_mask=q_mask.to(dev),
                                        score_index=torch.tensor([len(prompt) - 1], device=dev))
            # Positions len(prompt)-1 .. L-2 predict the continuation tokens.
            pred = logits[0, len(prompt) - 1:-1].float().log_softmax(-1)  # (n_cont, V)
            target_ids = ids[0, len(prompt):].to(dev)
            logprob = float(pred.gather(1, target_ids[:, None]).sum())
            res.append((logprob, bool((pred.argmax(-1) == target_ids).all())))
        return res

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError("arr_coc does not support multi-round generation")


def lmms_manifest():
    """The lmms-eval (>= 0.7) model manifest for ``arr_coc`` (the target of an ``lmms_eval.models`` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="arr_coc", simple_class_path=_CLASS_PATH)


def register() -> None:
    """Make ``arr_coc`` resolvable by the installed lmms-eval (manifest registry and, if present, the old decorator).

    Raises:
        ValueError: lmms-eval is not installed.
    """
    if not HAS_LMMS_EVAL:
        raise ValueError("lmms-eval is not installed: pip install lmms-eval")
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
    except ImportError:  # older lmms-eval
        MODEL_REGISTRY_V2 = None
    if MODEL_REGISTRY_V2 is not None:
        MODEL_REGISTRY_V2.register_manifest(lmms_manifest(), overwrite=True)
    try:
        from lmms_eval.api.registry import register_model

        register_model("arr_coc")(ArrCocLmms)
    except ImportError:
        pass


def _main(argv: Sequence[str] | None = None) -> None:
    """``python -m eval.lmms_adapter <lmms_eval arguments>``: register ``arr_coc``, then run lmms-eval's CLI."""
    register()
    from lmms_eval.__main__ import cli_evaluate

    sys.argv = ["lmms_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    _main()
