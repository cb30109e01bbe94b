"""Plug a language model (local or hosted) into labelling: mechscope writes the prompt and reads the answer.

`LLMLabeller(complete)` takes any function from a prompt to the model's text, so no client library is a
dependency: wrap llama.cpp, an OpenAI-compatible server or a test double. The answer is read line by line
(`input:`, `output:`, `label:`, `confidence:`); an answer without a `label:` line falls back to the built-in
heuristic label, so a flaky model never leaves a feature unlabelled. Dense and dead features never reach it
(the index builder labels them itself).

>>> lab = LLMLabeller(lambda prompt: "input: US state names\\noutput: say Texas\\nlabel: US states\\nconfidence: 0.8")
>>> lab.label(FeatureInfo(7, 331, [(" Texas", 9), (" Ohio", 3)], [(" Texas", 2.0)])).text
'US states'
"""

from __future__ import annotations

import json
import re
from typing import Callable

from mechscope.features.labels import FeatureInfo, HeuristicLabeller, Label, label_keywords

PROMPT = """You label features of a language model. A feature is active on some tokens of text.
Tokens where it is most active (token × count): {tokens}
Contexts, ending at the most active token:
{contexts}
Tokens it makes more likely: {promotes}
Tokens it makes less likely: {suppresses}
Answer in four lines:
input: what it reads, generalised (e.g. "US state names")
output: what it says (e.g. "say Texas"), or "none"
label: a short label of at most six words
confidence: a number from 0 to 1
"""


class LLMLabeller:
    """Labels from a language model: `complete(prompt) -> text` is all it needs.

    name: recorded as the index's `label_method` (say which model labelled it).
    """

    def __init__(self, complete: Callable[[str], str], name: str = "llm", max_contexts: int = 8) -> None:
        self.complete, self.name, self.max_contexts = complete, name, max_contexts
        self._fallback = HeuristicLabeller()

    def prompt(self, info: FeatureInfo) -> str:
        """The prompt sent for one feature (evidence chunks only: the held-out score stays honest)."""
        return PROMPT.format(
            tokens=", ".join(f"{t!r}×{n}" for t, n in info.top_tokens[:12]) or "none",
            contexts="\n".join(f"- {c!r}" for c in info.contexts[: self.max_contexts]) or "- none",
            promotes=", ".join(repr(t) for t, _ in info.top_logits[:10]) or "none",
            suppresses=", ".join(repr(t) for t, _ in info.bottom_logits[:10]) or "none",
        )

    def label(self, info: FeatureInfo) -> Label:
        fields = parse_answer(self.complete(self.prompt(info)))
        if not fields.get("label"):
            return self._fallback.label(info)
        try:
            conf = min(1.0, max(0.0, float(fields.get("confidence", "0.5"))))
        except ValueError:
            conf = 0.5
        out = "" if fields.get("output", "").lower() in ("", "none") else fields["output"]
        text = fields["label"]
        return Label(text, conf, fields.get("input", ""), out, "llm", tuple(sorted(label_keywords(text))))


def parse_answer(text: str) -> dict[str, str]:
    """`key: value` lines of a model's answer (keys lower-cased, surrounding quotes and markup dropped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\W*(input|output|label|confidence)\W*:\s*(.+)$", line.strip(), re.I)
        if m and m.group(1).lower() not in out:
            out[m.group(1).lower()] = m.group(2).strip().strip("*`").strip()
    return out


def command_complete(command: str, timeout_s: float = 120.0) -> Callable[[str], str]:
    """A `complete` that runs a shell command per feature: the prompt on its stdin, the answer from its stdout.

    >>> command_complete("cat")("label: echoed")
    'label: echoed'
    """
    import shlex
    import subprocess

    argv = shlex.split(command)

    def complete(prompt: str) -> str:
        done = subprocess.run(argv, input=prompt, capture_output=True, text=True, timeout=timeout_s, check=True)
        return done.stdout

    return complete


def openai_complete(url: str, model: str = "", timeout_s: float = 120.0) -> Callable[[str], str]:
    """A `complete` that asks an OpenAI-compatible server (llama.cpp's llama-server, Ollama, vLLM, a hosted API).

    `url` is the API base (`http://localhost:8080/v1`); the key, where one is needed, comes from $OPENAI_API_KEY.
    Standard library only: no client package is a dependency.

    >>> ask = openai_complete("http://localhost:8080/v1", model="qwen2.5-7b")   # doctest: +SKIP
    """
    import os
    import urllib.request

    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = "Bearer " + os.environ["OPENAI_API_KEY"]

    def complete(prompt: str) -> str:
        body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 120}
        if model:
            body["model"] = model
        req = urllib.request.Request(endpoint, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 (the user names the server)
            return json.loads(r.read())["choices"][0]["message"]["content"]

    return complete


def labeller_from_spec(spec: str) -> "HeuristicLabeller | LLMLabeller":
    """The labeller a CLI option names: `heuristic`, `command:CMD` or `openai:URL[#MODEL]`.

    The LLM is asked once before any work, so a wrong command or an unreachable server is one error up front,
    not 37k silent fallbacks to the heuristic label.

    >>> labeller_from_spec("heuristic").name
    'heuristic-v2'
    """
    from mechscope.errors import MechscopeError

    if spec == "heuristic":
        return HeuristicLabeller()
    kind, _, arg = spec.partition(":")
    if kind == "command" and arg.strip():
        complete, name = command_complete(arg), "llm-command:" + arg.split()[0]
    elif kind == "openai" and arg.strip():
        url, _, model = arg.partition("#")
        complete, name = openai_complete(url, model), "llm-openai:" + (model or url)
    else:
        raise MechscopeError(f"--labeller {spec!r}: use heuristic, command:CMD or openai:URL[#MODEL]")
    lab = LLMLabeller(complete, name=name)
    probe = FeatureInfo(0, 0, [(" Texas", 9), (" Ohio", 3)], [(" Austin", 2.0)], ["in the state of Texas"], 1)
    try:
        answer = complete(lab.prompt(probe))
    except Exception as e:  # noqa: BLE001 (any failure of the user's labeller is reported the same way)
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise MechscopeError(f"--labeller {spec!r} did not answer a test prompt: {msg}") from None
    if not parse_answer(answer).get("label"):
        raise MechscopeError(f"--labeller {spec!r} answered a test prompt without a 'label:' line: {answer[:80]!r}")
    return lab
