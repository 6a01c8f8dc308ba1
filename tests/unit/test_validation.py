import pytest
from inference.v1 import types_pb2

from services.common.errors import InvalidArgument
from services.router import validation


def req(**fields):
    fields.setdefault("model_id", "m")
    fields.setdefault("prompt", "hi")
    return types_pb2.GenerateRequest(**fields)


MODEL = types_pb2.ModelInfo(
    model_id="m",
    max_output_tokens=512,
    max_context_tokens=64,
    kind=types_pb2.MODEL_KIND_GENERATIVE,
)
EMBEDDER = types_pb2.ModelInfo(
    model_id="e", max_context_tokens=8, kind=types_pb2.MODEL_KIND_EMBEDDING
)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (req(model_id=""), "model_id is required"),
        (req(prompt="   "), "prompt must not be empty"),
        (req(prompt="x" * 101), "prompt too long"),
        (req(priority=9), "priority 9"),
        (req(request_id="x" * 129), "request_id"),
        (req(request_id="café"), "printable ASCII"),  # it travels as a header
        (req(request_id="a\nb"), "printable ASCII"),
        (req(sampling=types_pb2.SamplingParams(temperature=2.5)), "temperature"),
        (req(sampling=types_pb2.SamplingParams(temperature=float("nan"))), "temperature"),
        (req(sampling=types_pb2.SamplingParams(top_p=0)), "top_p"),
        (req(sampling=types_pb2.SamplingParams(top_k=5000)), "top_k"),
        (req(sampling=types_pb2.SamplingParams(stop=["a"] * 5)), "stop strings"),
        (req(sampling=types_pb2.SamplingParams(stop=[""])), "stop strings"),
    ],
)
def test_bad_fields_are_invalid_argument_with_a_precise_message(request_, message):
    with pytest.raises(InvalidArgument, match=message):
        validation.check_shape(request_, max_prompt_chars=100)


def test_max_tokens_is_checked_against_the_model():
    validation.check_against_model(req(max_tokens=512), MODEL)
    with pytest.raises(InvalidArgument, match="max_tokens 513"):
        validation.check_against_model(req(max_tokens=513), MODEL)


def test_a_prompt_that_cannot_fit_the_models_context_is_refused_before_tokenizing():
    validation.check_against_model(req(prompt="x" * 64 * 16), MODEL)
    with pytest.raises(InvalidArgument, match="too long for m"):
        validation.check_against_model(req(prompt="x" * (64 * 16 + 1)), MODEL)


def test_embedding_inputs_are_bounded_in_count_size_and_total():
    def embed(inputs):
        return types_pb2.EmbedRequest(model_id="e", inputs=inputs)

    with pytest.raises(InvalidArgument, match="1 to 256"):
        validation.check_embed_shape(embed(["a"] * 257), 10_000)
    with pytest.raises(InvalidArgument, match="inputs\\[1\\] too long"):
        validation.check_embed_shape(embed(["a", "b" * 101]), 100)
    with pytest.raises(InvalidArgument, match="inputs too long"):
        validation.check_embed_shape(embed(["c" * 2000] * 200), 10_000)
    with pytest.raises(InvalidArgument, match="too long for e"):
        validation.check_embed_against_model(embed(["d" * 129]), EMBEDDER)


def test_a_good_request_passes_and_is_normalized():
    good = req(sampling=types_pb2.SamplingParams(temperature=0.7, top_p=0.9, stop=["\n"]))
    validation.check_shape(good, max_prompt_chars=100)
    out = validation.normalized(good)
    assert out.priority == types_pb2.PRIORITY_MEDIUM
    assert len(out.request_id) == 32
    assert validation.normalized(req(request_id="mine")).request_id == "mine"


def test_a_model_is_used_only_by_the_rpc_of_its_kind():
    with pytest.raises(InvalidArgument, match="served by Embed"):
        validation.check_against_model(req(model_id="e"), EMBEDDER)
    with pytest.raises(InvalidArgument, match="served by Generate"):
        validation.check_kind(MODEL, types_pb2.MODEL_KIND_EMBEDDING)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "1 to 256"),
        (["a"] * 257, "1 to 256"),
        (["ok", " "], r"inputs\[1\] must not"),
        (["x" * 101], r"inputs\[0\] too long"),
    ],
)
def test_bad_embed_requests_are_invalid(inputs, message):
    with pytest.raises(InvalidArgument, match=message):
        validation.check_embed_shape(types_pb2.EmbedRequest(model_id="e", inputs=inputs), 100)
