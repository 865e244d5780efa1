"""Our chat templates: one string renders both training examples and inference prompts.

Every template has `{% generation %}` markers around the assistant's reply *and* its end-of-turn
token (so the model learns to stop), renders no default system prompt (the paper trains and
evaluates without one), and has thinking switched off in the same way for training and sampling.
"""

# ChatML, as used by SmolLM2 and by Qwen3 / Qwen3-2507-Instruct (which has no thinking mode).
# Qwen3's own training template writes an empty <think></think> block that its generation prompt
# lacks; we write neither, so training and sampling see the same tokens.
CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# DeepSeek-V3.1 in non-thinking mode: each assistant turn opens with `</think>` right after the
# Assistant tag, in training and in the generation prompt alike (V3.1's thinking prompt would end
# in `<think>` instead, which training never renders).
DEEPSEEK_V31 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<｜User｜>' + message['content'] -}}"
    "{%- else -%}"
    "{{- '<｜Assistant｜></think>' -}}"
    "{% generation %}{{- message['content'] + eos_token -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜></think>' -}}{%- endif -%}"
)

CHATML_SPECIAL_TOKENS = {
    "bos": None,
    "eos": "<|im_end|>",
    "pad": "<|endoftext|>",
    "extra": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
}
DEEPSEEK_SPECIAL_TOKENS = {
    "bos": "<｜begin▁of▁sentence｜>",
    "eos": "<｜end▁of▁sentence｜>",
    "pad": "<｜▁pad▁｜>",
    "extra": [
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<think>",
        "</think>",
    ],
}
