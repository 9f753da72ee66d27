"""lmms-eval adapter: the documented request interface (always), and the installed lmms-eval (when importable)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from eval.lmms_adapter import HAS_LMMS_EVAL, ArrCocLmms
from models.builders import build_model, model_dict

QUESTIONS = ["what digit is in the red circle?", "how many triangles?", "is there a blue square?"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny")


def _docs(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "question": q}
            for q in QUESTIONS[:n]]


def _adapter(tiny, **kw) -> ArrCocLmms:
    model, processor = tiny
    lm = ArrCocLmms(model=model, processor=processor, device="cpu", max_new_tokens=4, **kw)
    lm.task_dict = {"toy": {"test": _docs(3)}}
    return lm


def _gen_request(i: int, gen_kwargs: dict):
    return SimpleNamespace(args=(QUESTIONS[i], gen_kwargs, lambda doc: [doc["image"]], i, "toy", "test"))


def test_generate_until_documented_interface(tiny):
    lm = _adapter(tiny, batch_size=2)
    reqs = [_gen_request(i, {"max_new_tokens": 4}) for i in range(3)]
    out = lm.generate_until(reqs)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)
    # A baseline at a token fraction goes through the same interface.
    lm_b = _adapter(tiny, method="visionzip", token_fraction=0.25, batch_size=3)
    assert lm_b.method.num_tokens == 16 and len(lm_b.generate_until(reqs)) == 3


def test_generate_until_cuts_at_the_earliest_stop_string(tiny, monkeypatch):
    """The tiny random model decodes to byte artefacts, so known continuations are put in place of its decode."""
    lm = _adapter(tiny, batch_size=3)
    texts = ["12 apples. More", "no stop here", "a\nb. c"]
    monkeypatch.setattr(lm.processor, "batch_decode", lambda seqs: texts[: len(seqs)])
    reqs = [_gen_request(i, {"max_new_tokens": 4, "until": [".", "\n"]}) for i in range(3)]
    assert lm.generate_until(reqs) == ["12 apples", "no stop here", "a"]
    one = [_gen_request(0, {"max_new_tokens": 4, "until": "apples"})]  # a bare string is one stop
    assert lm.generate_until(one) == ["12 "]


def test_generate_until_with_fastv_one_request_at_a_time():
    """batch_size=1 (the adapter's default) means unpadded batches, where SDPA passes FastV no attention mask."""
    torch.manual_seed(0)
    three_layers = build_model(model_dict("tiny", {"llm": {"text_config": {"num_hidden_layers": 3}}}))  # K=2 prunes
    lm = _adapter(three_layers, method="fastv", token_fraction=0.25)
    out = lm.generate_until([_gen_request(i, {"max_new_tokens": 3}) for i in range(2)])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_loglikelihood_matches_a_direct_forward(tiny):
    model, processor = tiny
    lm = _adapter(tiny)
    doc = lm.task_dict["toy"]["test"][1]
    reqs = [SimpleNamespace(args=(QUESTIONS[1], " 7", lambda d: [d["image"]], 1, "toy", "test"))]
    (logprob, greedy), = lm.loglikelihood(reqs)
    # The same score from ArrCocLlava.forward on the teacher-forced sequence.
    prompt = processor.encode_prompt(QUESTIONS[1])
    cont = processor.tokenizer(" 7", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + cont])
    q_ids, q_mask = processor.encode_queries([QUESTIONS[1]])
    with torch.no_grad():
        logits = model(processor.preprocess_images([doc["image"]]), ids, torch.ones_like(ids),
                       query_input_ids=q_ids, query_attention_mask=q_mask).logits
    lp = logits[0, len(prompt) - 1:-1].log_softmax(-1)
    want = float(lp.gather(1, torch.tensor(cont)[:, None]).sum())
    assert logprob == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert logprob < 0
    assert greedy == bool((lp.argmax(-1) == torch.tensor(cont)).all())


def test_bad_arguments_and_missing_image(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="frobnicate"):
        ArrCocLmms(model=model, processor=processor, frobnicate=3)
    lm = _adapter(tiny)
    req = SimpleNamespace(args=("q", {}, lambda doc: [], 0, "toy", "test"))
    with pytest.raises(ValueError, match="needs an image"):
        lm.generate_until([req])


@pytest.mark.skipif(not HAS_LMMS_EVAL, reason="lmms-eval is not installed (optional)")
def test_registered_in_the_installed_lmms_eval(tiny):
    from lmms_eval import models as lmms_models
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms

    from eval.lmms_adapter import register

    assert issubclass(ArrCocLmms, lmms)
    register()
    cls = lmms_models.get_model("arr_coc")
    assert cls is ArrCocLmms
    lm = cls.create_from_arg_string("model_preset=tiny,method=uniform,token_fraction=0.5",
                                    {"batch_size": 2, "device": "cpu"})
    lm.task_dict = {"toy": {"test": _docs(2)}}
    reqs = [Instance(request_type="generate_until", arguments=(QUESTIONS[i], {"max_new_tokens": 3},
                                                               lambda d: [d["image"]], i, "toy", "test"),
                     idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1}) for i in range(2)]
    out = lm.generate_until(reqs)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_generation_settings_beyond_the_basics(tiny, monkeypatch):
    """num_beams > 1 is refused (it was dropped silently, answering greedily); do_sample follows the temperature;
    top_p/top_k reach generate only when sampling; any other setting is named in a warning."""
    lm = _adapter(tiny, batch_size=2)
    with pytest.raises(ValueError, match="num_beams=3"):
        lm.generate_until([_gen_request(0, {"max_new_tokens": 2, "num_beams": 3})])
    seen = []
    real = lm.method.generate
    monkeypatch.setattr(lm.method, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    greedy = {"max_new_tokens": 2, "num_beams": 1, "do_sample": False, "top_p": 0.9, "temperature": 0}
    lm.generate_until([_gen_request(0, greedy)])
    assert seen[-1]["do_sample"] is False and "top_p" not in seen[-1]
    lm.generate_until([_gen_request(0, {"max_new_tokens": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 5})])
    assert seen[-1]["do_sample"] is True and (seen[-1]["top_p"], seen[-1]["top_k"]) == (0.9, 5)
    with pytest.warns(UserWarning, match=r"ignores the generation setting\(s\) \['image_aspect_ratio'\]"):
        lm.generate_until([_gen_request(0, {"max_new_tokens": 2, "image_aspect_ratio": "original"})])


def test_constructor_arguments_as_lmms_eval_passes_them(tiny):
    """lmms-eval passes every value as a string and some arguments (max_length, ...) to every model."""
    model, processor = tiny
    lm = ArrCocLmms(model=model, processor=processor, device="cpu", token_fraction="None", batch_size="2",
                    max_length=2048, device_map="auto", seed=None)
    assert lm.method.num_tokens == 32 and lm.batch_size == 2  # "None": the trained budget
    assert ArrCocLmms(model=model, processor=processor, device="cpu", method="uniform",
                      token_fraction="0.25").method.num_tokens == 16
    with pytest.raises(ValueError, match="batch_size and max_new_tokens must be >= 1, got 0, 16"):
        ArrCocLmms(model=model, processor=processor, device="cpu", batch_size="0")


def test_first_image_flattens_nested_visuals_and_converts_to_rgb():
    from eval.lmms_adapter import _first_image

    grey = Image.new("L", (8, 6), 90)
    img = _first_image(["not an image", (grey,)], "toy/test doc 0")  # one level of nesting
    assert img.mode == "RGB" and img.size == (8, 6)
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # transparent black: blank (white) to a reader, not black
    white = _first_image([clear], "toy/test doc 1")
    assert white.mode == "RGB" and (np.asarray(white) == 255).all()


def test_one_generate_call_per_generation_setting(tiny, monkeypatch):
    """Requests of one batch with different settings are generated apart, each with its own max_new_tokens (the
    adapter's own when the task gives none); num_beams=None counts as one beam; an ignored setting warns once."""
    import warnings

    lm = _adapter(tiny, batch_size=3)
    seen = []
    real = lm.method.generate
    monkeypatch.setattr(lm.method, "generate", lambda *a, **kw: seen.append((len(a[0]), kw)) or real(*a, **kw))
    out = lm.generate_until([_gen_request(0, {"max_new_tokens": 1}), _gen_request(1, {"max_new_tokens": 3}),
                             _gen_request(2, {"max_new_tokens": 1, "num_beams": None})])
    assert len(out) == 3
    assert sorted((n, kw["max_new_tokens"]) for n, kw in seen) == [(1, 1), (1, 1), (1, 3)]
    seen.clear()
    lm.generate_until([_gen_request(0, {}), _gen_request(1, {})])
    assert [(n, kw["max_new_tokens"]) for n, kw in seen] == [(2, 4)]
    with pytest.warns(UserWarning, match="'foo'"):
        lm.generate_until([_gen_request(0, {"max_new_tokens": 1, "foo": 1})])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.generate_until([_gen_request(0, {"max_new_tokens": 1, "foo": 2})])  # named once only


def test_loglikelihood_by_hand_on_set_logits(tiny, monkeypatch):
    """Known logits: the log-probability of each continuation token, summed; greedy only when every token is the
    argmax; a callable target is applied to the doc; an empty continuation is refused."""
    lm = _adapter(tiny)
    tok = lm.processor.tokenizer
    prompt = lm.processor.encode_prompt(QUESTIONS[1])
    cont = tok(" 7", add_special_tokens=False)["input_ids"]
    assert len(cont) == 2

    def logits_for(first_is_argmax: bool, second_is_argmax: bool):
        z = torch.zeros(1, len(prompt) + len(cont), 264)
        z[0, len(prompt) - 1, cont[0] if first_is_argmax else (cont[0] + 1) % 264] = 5.0
        z[0, len(prompt), cont[1] if second_is_argmax else (cont[1] + 1) % 264] = 5.0
        return z

    target = lambda doc: " 7" if doc is lm.task_dict["toy"]["test"][1] else "x"  # noqa: E731 (doc_to_target)
    req = SimpleNamespace(args=(QUESTIONS[1], target, lambda d: [d["image"]], 1, "toy", "test"))
    norm = float(torch.log(torch.tensor(263.0) + torch.exp(torch.tensor(5.0))))
    for first, second in ((True, True), (True, False), (False, True)):
        monkeypatch.setattr(lm.method, "logits", lambda *a, f=first, s=second, **kw: logits_for(f, s))
        (logprob, greedy), = lm.loglikelihood([req])
        assert logprob == pytest.approx(5.0 * first + 5.0 * second - 2 * norm, abs=1e-5)
        assert greedy is (first and second)
    empty = SimpleNamespace(args=(QUESTIONS[1], "", lambda d: [d["image"]], 1, "toy", "test"))
    with pytest.raises(ValueError, match="toy/test doc 1: the continuation '' has no tokens"):
        lm.loglikelihood([empty])


def test_a_bare_until_string_is_one_stop_not_its_characters(tiny, monkeypatch):
    lm = _adapter(tiny)
    monkeypatch.setattr(lm.processor, "batch_decode", lambda seqs: ["12 apples. More"][: len(seqs)])
    assert lm.generate_until([_gen_request(0, {"max_new_tokens": 4, "until": "ple"})]) == ["12 ap"]


def test_each_process_of_a_multi_process_run_takes_its_own_gpu(tiny, monkeypatch):
    """Under accelerate/torchrun, device=auto (or cuda) is cuda:LOCAL_RANK; an unindexed 'cuda' put every process's
    model on cuda:0 and then followed the current device, which lmms-eval's Accelerator() sets to cuda:LOCAL_RANK:
    inputs and model on different GPUs. No GPU is needed: where the model goes is recorded."""
    import eval.run_eval

    model, processor = tiny
    placed = []
    monkeypatch.setattr(model, "to", lambda d: placed.append(d) or model)
    monkeypatch.setattr(eval.run_eval, "_device", lambda name: torch.device("cuda" if name == "auto" else name))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for device in ("auto", "cuda"):
        assert ArrCocLmms(model=model, processor=processor, device=device).device == torch.device("cuda", 1)
    assert placed == [torch.device("cuda", 1)] * 2
    assert ArrCocLmms(model=model, processor=processor, device="cuda:0").device == torch.device("cuda", 0)
    assert ArrCocLmms(model=model, processor=processor, device="cpu").device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the current device
    assert ArrCocLmms(model=model, processor=processor, device="auto").device == torch.device("cuda", 0)
