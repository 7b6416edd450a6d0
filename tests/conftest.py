import os

# CPU tensors run the Triton kernels under the interpreter in tests; this must be
# set before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# The suite's wall time on CI's two cores (two xdist workers) is bounded by its slowest
# tests: started last, one of them can keep a worker busy minutes after the other has
# finished. So the tests measured slowest run first, longest first (durations of a full
# run, `--durations=60`, in seconds in the comments); every other test keeps its place.
# xdist's loadgroup puts the xdist_group modules (test_cli, test_tensor_parallel) first
# in any case. A key is "file::function" (all its parameters) or a file (all its tests).
SLOW_FIRST = [
    "test_transformers_generate.py::test_new_batch_sizes_and_prompt_lengths_do_not_recompile_every_step",  # 95
    "test_examples.py::test_tensor_parallel_two_processes",  # 83, two processes
    "test_fuzz_attention.py",  # 77
    "test_examples.py::test_generate_transformers",  # 66
    "test_transformers_generate.py::test_compiled_forward_with_dynamic_cache",  # 58, 54
    "test_transformers_dsa.py::test_static_cache_decode_steps",  # 43
    "test_fuzz_rope.py",  # 40
    "test_transformers_decode.py::test_dynamic_cache_ten_steps_one_dynamic_graph",  # 38
    "test_transformers_decode.py::test_static_cache_steps_absorbed_and_few_compiles",  # 37
    "test_cache_uuid.py::test_switching_the_pass_off_is_not_served_cached_rewrite",  # 34
    "test_transformers_generate.py::test_generate_with_compile_config",  # 33, 27
    "test_transformers_generate.py::test_third_family_generate",  # 30
    "test_transformers_families.py::test_family_fully_fused",  # 30 .. 17
    "test_examples.py::test_quickstart",  # 28
    "test_attention_fusion.py::test_training_graph_left_alone_and_correct",  # 23
    "test_fuzz_latent.py",  # 20
    "test_attention_fusion.py::test_shape_fused_and_equal",  # 20 .. 6
    "test_transformers_dsa.py::test_prefill_eager_finite_fill_proven_causal",  # 19
    "test_transformers_dsa.py::test_prefill_sparse",  # 19
    "test_transformers_attention.py::test_padding_mask_and_yarn_mscale",  # 19
    "test_training.py::test_joint_graph_found_by_structure_not_names",  # 18
    "test_transformers_decode.py::test_dynamic_cache_step_absorbed",  # 18
    "test_transformers_attention.py::test_bf16_logits_close",  # 18
    "test_transformers_dsa.py::test_glm_shared_topk_layers",  # 17
    "test_transformers_rope.py::test_every_layer_rope_fused",  # 16
    "test_transformers_attention.py::test_every_layer_attention_fused",  # 15
    "test_latent_attention.py::test_twenty_decode_steps_batch_and_context_vary",  # 15
    "test_transformers_dsa.py::test_dynamic_cache_decode_step",  # 15
    "test_indexer_rope.py::test_transformers_dsa_reports_count_the_indexer_rope",  # 14
    "test_sparse_pass.py::test_dsa_layers",  # 13
    "test_attention_fusion.py::test_dynamic_sequence_length",  # 12
]


def pytest_collection_modifyitems(config, items):
    rank = {key: i for i, key in enumerate(SLOW_FIRST)}

    def key(item):
        path, _, name = item.nodeid.partition("::")
        file = path.rsplit("/", 1)[-1]
        function = f"{file}::{name.split('[', 1)[0]}"
        return min(rank.get(function, len(rank)), rank.get(file, len(rank)))

    items.sort(key=key)  # stable: unlisted tests keep their order, after the listed ones
