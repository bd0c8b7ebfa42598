"""Our stand-in for transformers' `tests/utils/test_configuration_utils.py` (not in the transformers sdist).

`ConfigTester.check_config_arguments_init` builds a config from `config_common_kwargs` and checks that each of
`PreTrainedConfig`'s common arguments is kept. These are the arguments transformers' own dict names (transformers
5.x), with `label2id`'s value an int: `XMAdapterConfig` stores label ids as ints, as `id2label`'s keys are.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}
