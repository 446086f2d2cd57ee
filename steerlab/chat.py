"""Rendering a chat with a model's template: the one way steerlab turns messages into a prompt.

Templates that read the clock are rendered with a fixed date (recorded by every run), and the
template hash covers that date; :func:`generation_lead` finds a reasoning block the template
opens in the generation prompt, :func:`template_system_prompt` the system turn it injects by itself.

Templates that reject a system role (Gemma-2, Mistral v0.1/v0.2 raise "System role not supported" or
"Conversation roles must alternate") get the system prompt folded into the first user turn:
``[user: system + "\n\n" + user, ...]``. :func:`folds_system` says whether a template is one of them
(found once per template and process by rendering a tiny probe chat); a notice says so once on stderr.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from typing import Any

from steerlab.errors import ConfigError
from steerlab.tags import REASONING_OPENS, open_reasoning

log = logging.getLogger(__name__)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# A plain template for tokenizers that ship none (GPT-2, Pythia). Recorded by hash like any other.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)

# Chat templates that read the clock (Llama-3.1/3.2/3.3 render "Today Date: ..." into every prompt)
# are rendered with this fixed date instead, so prompts, activations and hashes do not depend on the
# day a job runs. Every run records the date it used (``chat_date``); the template hash includes it.
DEFAULT_CHAT_DATE = "2024-07-26"

_STRFTIME_CALL = re.compile(r"strftime_now\s*\(\s*(['\"])(.*?)\1\s*\)")
_STRFTIME_ANY = re.compile(r"strftime_now\s*\(")


def check_chat_date(chat_date: str | datetime.date) -> str:
    """``chat_date`` as YYYY-MM-DD (a date object, as YAML reads ``2024-07-26``, is accepted)."""
    if isinstance(chat_date, datetime.date):
        return chat_date.isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(chat_date)):
            raise ValueError
        return datetime.date.fromisoformat(chat_date).isoformat()
    except (TypeError, ValueError):
        raise ConfigError(f"chat date {chat_date!r} is not a date; give it as YYYY-MM-DD (e.g. 2024-07-26)") from None


def fixed_date_template(template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str:
    """``template`` with ``strftime_now`` bound to ``chat_date`` (unchanged if it never reads the clock).

    transformers gives templates a ``strftime_now(format)`` global that reads the wall clock. A
    template-level macro of the same name shadows it: it returns ``chat_date`` formatted with each
    format string the template passes literally. A template that builds the format at run time
    cannot be fixed this way and is refused.
    """
    if "strftime_now" not in template:
        return template
    day = datetime.date.fromisoformat(check_chat_date(chat_date))
    calls = _STRFTIME_CALL.findall(template)
    if len(calls) != len(_STRFTIME_ANY.findall(template)):
        raise ConfigError(
            "the chat template calls strftime_now with a computed format, so steerlab cannot fix its date; "
            "give the model a tokenizer_config.json whose chat_template passes the format as a literal"
        )
    table = json.dumps({fmt: day.strftime(fmt) for _, fmt in calls})
    macro = (
        "{%- macro strftime_now(fmt) -%}{%- set t = " + table + " -%}"
        "{%- if fmt in t -%}{{- t[fmt] -}}{%- else -%}"
        "{{- raise_exception('steerlab: strftime_now format ' ~ fmt ~ ' was not seen in the template') -}}"
        "{%- endif -%}{%- endmacro -%}\n"
    )
    return macro + template


def _apply(
    tokenizer: Any, messages: list[dict[str, str]], template: str, add_generation_prompt: bool, chat_date: str
) -> str:
    day = datetime.date.fromisoformat(check_chat_date(chat_date))
    return tokenizer.apply_chat_template(
        list(messages), chat_template=fixed_date_template(template, chat_date), tokenize=False,
        add_generation_prompt=add_generation_prompt, date_string=day.strftime("%d %b %Y"),
    )  # fmt: skip


# chat_template_hash -> whether the template rejects a system role (found once per process)
_FOLDS: dict[str, bool] = {}
_SYSTEM_PROBE = "steerlab-system-probe-5c1e"
_USER_PROBE = "steerlab-user-probe-5c1e"
FOLD_SEPARATOR = "\n\n"  # between the folded system prompt and the first user turn's content


def folds_system(tokenizer: Any, template: str, chat_date: str = DEFAULT_CHAT_DATE) -> bool:
    """Whether ``template`` rejects a system role, so that :func:`render_chat` folds the system prompt
    into the first user turn (the way a run should record it, e.g. ``"system_folded"``).

    Found by rendering ``[system, user]``: a template that raises on it (``raise_exception`` in the
    template, any other template error) while it renders the folded ``[user]`` folds. Cached per
    template hash for the process; the first time a template folds, a notice goes to stderr.
    """
    key = chat_template_hash(template, chat_date)
    if key not in _FOLDS:
        system = {"role": "system", "content": _SYSTEM_PROBE}
        user = {"role": "user", "content": _USER_PROBE}
        try:
            _apply(tokenizer, [system, user], template, True, chat_date)
            folds = False
        except ConfigError:
            raise
        except Exception as e:  # the template's own exception (jinja2 TemplateError from raise_exception)
            try:
                _apply(tokenizer, _fold([system, user]), template, True, chat_date)
                folds = True
            except ConfigError:
                raise
            except Exception:  # it cannot render a plain user turn either: not a system-role problem
                folds = False
            if folds:
                log.warning(
                    "the chat template (%s) rejects a system role (%s): the system prompt is folded into the "
                    "first user turn", key, str(e).splitlines()[0] if str(e) else type(e).__name__,
                )  # fmt: skip
        _FOLDS[key] = folds
    return _FOLDS[key]


def _fold(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``[system, user, ...]`` as ``[user: system + "\n\n" + user, ...]`` (``[user: system, ...]`` when
    no user turn follows the system prompt)."""
    if not messages or messages[0].get("role") != "system":
        return list(messages)
    system, rest = messages[0], list(messages[1:])
    if rest and rest[0].get("role") == "user":
        return [{**rest[0], "content": system["content"] + FOLD_SEPARATOR + rest[0]["content"]}, *rest[1:]]
    return [{"role": "user", "content": system["content"]}, *rest]


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    *,
    add_generation_prompt: bool = False,
    chat_date: str = DEFAULT_CHAT_DATE,
) -> str:
    """The one way steerlab renders a chat: the given template, with a fixed date (see above).

    ``date_string`` is passed as well: Llama-3.x templates read it instead of the clock when defined.
    A template that rejects a system role gets the system prompt folded into the first user turn
    (:func:`folds_system`); every other template renders the messages as given.
    """
    messages = list(messages)
    if messages and messages[0].get("role") == "system" and folds_system(tokenizer, template, chat_date):
        messages = _fold(messages)
    return _apply(tokenizer, messages, template, add_generation_prompt, chat_date)


def generation_lead(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    chat_date: str = DEFAULT_CHAT_DATE,
    rendered: str | None = None,
) -> str:
    """The reasoning block a template opens in the generation prompt itself, e.g. ``"<think>\n"``
    (DeepSeek-R1 distills, QwQ), or "".

    The model's text then starts inside that block and holds a ``</think>`` with no ``<think>``
    before it; the lead is part of the sample's transcript, so the stop rule and the labels see
    the block as open from the start. ``rendered``: the messages already rendered with the generation
    prompt (saves rendering them again).
    """
    full = (
        rendered
        if rendered is not None
        else render_chat(tokenizer, messages, template, add_generation_prompt=True, chat_date=chat_date)
    )
    base = render_chat(tokenizer, messages, template, add_generation_prompt=False, chat_date=chat_date)
    suffix = full[len(base) :] if full.startswith(base) else full[-64:]
    if not open_reasoning(suffix):
        return ""
    at = max(suffix.rfind(tag) for tag in REASONING_OPENS)
    return suffix[at:]


def template_system_prompt(tokenizer: Any, template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str | None:
    """What the template renders before a lone user turn, when that includes a system turn it injects
    by itself (SmolLM2, Qwen2.5 and Llama-3.x do); None when it injects none.

    The returned text is rendered template output (role markers included), so a reader sees exactly
    what the model was shown before the request in a "no system prompt" condition.
    """
    probe = "steerlab-user-probe-7f3a"
    try:
        alone = render_chat(tokenizer, [{"role": "user", "content": probe}], template, chat_date=chat_date)
    except ConfigError:
        raise
    except Exception:  # a template that cannot render a lone user turn injects nothing we can show
        return None
    before = alone[: alone.find(probe)] if probe in alone else ""
    return before if "system" in before.lower() or "<<SYS>>" in before else None


def chat_template_hash(template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str:
    """Hash of what renders prompts: the template and, when it reads the clock, the fixed date."""
    if "strftime_now" in template or "date_string" in template:
        return _sha(f"{template}\0{chat_date}".encode())
    return _sha(template.encode())
