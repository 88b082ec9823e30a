#!/usr/bin/env python3
"""Differential check of dwarfstar-tokenizer's chat templates against Jinja2 set up as
Hugging Face's apply_chat_template does (trim_blocks, lstrip_blocks, loopcontrols, the
{% generation %} tag, raise_exception, strftime_now, tojson as json.dumps, tools=None).

For every *.jinja file in TEMPLATE_DIR (llama.cpp keeps many in models/templates/) and a
few conversations, with and without the generation prompt, both renderings must be
identical, or both must fail (a template that fails only in Jinja2, such as one
iterating `tools` when it is None, is reported but accepted: minijinja is lenient there).

Usage:
  cargo build --release -p dwarfstar-tokenizer --example chat_template
  python3 daemon/tokenizer/scripts/diff_chat_templates.py TEMPLATE_DIR MODEL.gguf
(needs the jinja2 Python package; BOS/EOS texts are taken from MODEL.gguf.)
"""
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    "multi_turn": [
        {"role": "system", "content": "Be nice.\n"},
        {"role": "user", "content": "  Hello  "},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": 'Tell me a joke about "quotes" & <tags>.'},
    ],
    "alternating": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                    {"role": "user", "content": "three"}],
}


class Generation(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def hf_render(source, messages, add_generation_prompt, bos, eos):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.datetime.now(datetime.timezone.utc).strftime(f)
    return env.from_string(source).render(messages=messages, tools=None, documents=None,
                                          add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)


def main():
    template_dir, model = sys.argv[1], sys.argv[2]
    ours = os.path.join(os.path.dirname(__file__), "../../../target/release/examples/chat_template")
    # BOS/EOS texts as the tokenizer sees them: render a template that prints them.
    with tempfile.TemporaryDirectory() as tmp:
        probe, msgs_path = os.path.join(tmp, "probe.jinja"), os.path.join(tmp, "m.json")
        with open(probe, "w") as f:
            f.write("{{ bos_token }}\n{{ eos_token }}")
        with open(msgs_path, "w") as f:
            json.dump([], f)
        bos, eos = subprocess.run([ours, model, probe, msgs_path], capture_output=True, text=True,
                                  check=True).stdout.split("\n")
        same = differ = both_fail = lenient = 0
        for path in sorted(glob.glob(os.path.join(template_dir, "*.jinja"))):
            source = open(path, encoding="utf-8").read()
            for name, messages in CONVERSATIONS.items():
                with open(msgs_path, "w") as f:
                    json.dump(messages, f)
                for gen in (True, False):
                    try:
                        want = hf_render(source, messages, gen, bos, eos)
                    except Exception:  # noqa: BLE001 - any Jinja2 failure counts as a failure
                        want = None
                    args = [ours, model, path, msgs_path] + ([] if gen else ["--no-generation-prompt"])
                    got = subprocess.run(args, capture_output=True, text=True)
                    got = got.stdout if got.returncode == 0 else None
                    if want is None and got is None:
                        both_fail += 1
                    elif want == got:
                        same += 1
                    elif want is None:
                        # Jinja2 raised (e.g. iterating tools=None) where minijinja is lenient.
                        lenient += 1
                    else:
                        differ += 1
                        print(f"DIFFERENT {os.path.basename(path)} {name} generation_prompt={gen} "
                              f"(jinja2 {'failed' if want is None else 'ok'}, ours {'failed' if got is None else 'ok'})")
    print(f"{same} same, {both_fail} failing in both, {lenient} failing only in jinja2, {differ} different")
    print(f"{same + both_fail + lenient} passed, {differ} failed")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
