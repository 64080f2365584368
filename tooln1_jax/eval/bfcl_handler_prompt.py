"""The BFCL prompt of the Tool-N1 release's own evaluation (`eval/bfcl_handler.py`, `QwenReasonHandler`), for
`tooln1 eval bfcl --prompt tooln1-bfcl`: its system text (assets/prompts/tooln1_bfcl_handler_system.txt) with the
functions as BFCL's prompting handlers pre-process them (each description ends with the Python-syntax hint), then
the question turns, written with the ChatML markers by hand as the handler does (no chat template).

It differs from the project's default prompt (the training prompt, `data/prompts.py`): another system text, which
among other things asks for `<tool_call>[]</tool_call>` when no function applies; the benchmark's own system turn
is dropped (the handler overwrites it).
"""

from __future__ import annotations

import copy
import json

from tooln1_jax import assets

SYSTEM = assets.path("prompts", "tooln1_bfcl_handler_system.txt").read_text(encoding="utf-8")
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."  # BFCL's hint for Python categories


def functions_text(functions: list[dict]) -> str:
    """BFCL's pre-processing (Python categories), then one JSON line per function, each ending in a newline."""
    functions = copy.deepcopy(functions)
    for function in functions:
        function["description"] = function["description"] + PYTHON_HINT
    return "".join(json.dumps({"type": "function", "function": f}) + "\n" for f in functions)


def render(tools: list[dict], messages: list[dict]) -> str:
    """The prompt text the handler sends for a question with these functions and (user / assistant) turns."""
    turns = [{"role": "system", "content": SYSTEM.replace("{functions}", functions_text(tools))}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
    return text + "<|im_start|>assistant\n"
