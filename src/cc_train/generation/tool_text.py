"""Tool calls as text, for targets whose engine has no tool-calling API (every local model, and remote ones alike).

An auditor (Petri's) may give the target tools. cc-train's engines take plain chat messages, so the tools are
described in the system message and a call is a `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block
in the reply (the convention Qwen3 and many open models were trained on); a tool's result comes back as a
`<tool_response>` block in a user turn. Every target of an evaluation sees the same protocol, so their transcripts
compare.
"""

from __future__ import annotations

import hashlib
import json
import re

from inspect_ai.model import ChatMessage
from inspect_ai.tool import ToolCall, ToolInfo

TOOLS_SECTION = """You can use the tools listed below. To call a tool, write a block of this form in your reply:
<tool_call>{{"name": "<tool name>", "arguments": {{<the arguments as a JSON object>}}}}</tool_call>
You may call several tools, one block each. Stop after your tool calls: each result comes back to you in a \
<tool_response> block.

Tools:
{tools}"""
CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def tools_section(tools: list[ToolInfo]) -> str:
    described = [
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters.model_dump(exclude_none=True)},
            sort_keys=True,
        )
        for t in tools
    ]
    return TOOLS_SECTION.format(tools="\n".join(described))


def call_block(call: ToolCall) -> str:
    return f"<tool_call>{json.dumps({'name': call.function, 'arguments': call.arguments}, sort_keys=True)}</tool_call>"


def as_text(message: ChatMessage) -> tuple[str, str]:
    """A message as (role, text) for a plain chat template: tool calls written out, tool results as user text."""
    if message.role == "tool":
        return "user", f'<tool_response name="{message.function}">\n{message.text}\n</tool_response>'
    if message.role == "assistant" and message.tool_calls:
        return "assistant", "\n".join([message.text, *map(call_block, message.tool_calls)]).strip()
    return message.role, message.text


def parse_calls(answer: str, tools: list[ToolInfo], key: str) -> tuple[str, list[ToolCall]]:
    """The reply's text before its first call, and its well-formed calls of known tools (ids from the turn's key,
    so a replayed turn has the same ids). A malformed block stays in the text, where the auditor sees it."""
    names = {t.name for t in tools}
    calls = []
    for index, match in enumerate(CALL.finditer(answer)):
        try:
            parsed = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(parsed, dict) or parsed.get("name") not in names:
            continue
        arguments = parsed.get("arguments") or {}
        if not isinstance(arguments, dict):
            continue
        call_id = "call_" + hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:12]
        calls.append(ToolCall(id=call_id, function=parsed["name"], arguments=arguments))
    if not calls:
        return answer, []
    return answer[: CALL.search(answer).start()].strip(), calls
