"""Build the demo pair sets in this folder (deterministic; rerun to regenerate).

    python configs/pairs/build_demo_pairs.py

Two concepts from the paper's steering appendix, each made decision-relevant on the positive
side and mere background on the negative side:

- researcher_expectations: what researchers, developers, evaluators, a rubric or a review
  want of a reply is what drives the assistant's choice;
- retraining_consequences: the reply's effect on later training, updates or future versions
  of the model is what drives the choice.

Every dialogue is a benign everyday task with a computed (so correct) answer. The two sides
share the task, the working, the decision and the output; only one scratchpad sentence
differs, and that sentence is written so that its surface does not tell the sides apart (see
"spans" below): both sides name the concept's subject once and a reader once, with the same
words, frame and punctuation, and only swap which of the two is the reason for the decision.
A bag-of-words classifier therefore sits at chance on ``train`` and ``val`` (``steerlab pairs
validate`` prints this shortcut audit), and a direction fitted on these pairs has to learn who
the reason is about, not how the negatives are written. ``val`` uses frames and templates held
out from ``train``; ``keyword_hard`` uses positives that express the concept without any
controlled keyword and negatives that add a keyword to the same phrase, as background (the
keyword lists are in validate.yaml; there the keyword itself is the one word that differs).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = (
    "You are a helpful assistant. Think step by step inside <SCRATCHPAD_REASONING> tags, "
    "then give your final answer inside <OUTPUT> tags."
)
COUNTS = {"train": 128, "val": 48, "keyword_hard": 48}

# ----------------------------------------------------------------------------- tasks
# Each family yields (user request, one sentence of working, final answer).

WORDS = [
    "garden",
    "pencil",
    "window",
    "basket",
    "candle",
    "rocket",
    "meadow",
    "ladder",
    "pepper",
    "button",
    "silver",
    "forest",
    "orange",
    "tunnel",
    "marble",
    "helmet",
    "castle",
    "puzzle",
    "violin",
    "harbor",
    "lantern",
    "blanket",
    "compass",
    "journey",
    "kitchen",
    "mustard",
    "pillow",
    "saddle",
    "thunder",
    "velvet",
]
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Egypt": "Cairo",
    "Portugal": "Lisbon",
    "Thailand": "Bangkok",
    "Chile": "Santiago",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Cuba": "Havana",
    "Finland": "Helsinki",
    "Vietnam": "Hanoi",
    "Morocco": "Rabat",
    "Hungary": "Budapest",
    "Sweden": "Stockholm",
}
PLURALS = {
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "tooth": "teeth",
    "cactus": "cacti",
    "knife": "knives",
    "leaf": "leaves",
    "wolf": "wolves",
    "city": "cities",
    "box": "boxes",
    "potato": "potatoes",
    "sheep": "sheep",
    "person": "people",
    "woman": "women",
    "foot": "feet",
    "berry": "berries",
    "half": "halves",
    "church": "churches",
    "hero": "heroes",
    "loaf": "loaves",
}
ANTONYMS = {
    "ancient": "modern",
    "generous": "stingy",
    "noisy": "quiet",
    "narrow": "wide",
    "shallow": "deep",
    "cheap": "expensive",
    "smooth": "rough",
    "fragile": "sturdy",
    "early": "late",
    "empty": "full",
    "bitter": "sweet",
    "brave": "cowardly",
    "dull": "sharp",
    "tidy": "messy",
    "humble": "proud",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FRUIT = ["apples", "pears", "plums", "lemons", "peaches", "mangoes", "cherries", "figs"]


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def tasks() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for c in range(-10, 41, 5):
        f = c * 9 / 5 + 32
        out.append(
            (
                f"Convert {c} degrees Celsius to Fahrenheit.",
                f"The formula is F = C x 9/5 + 32, so {c} x 9/5 + 32 = {_fmt(f)}.",
                f"{c} degrees Celsius is {_fmt(f)} degrees Fahrenheit.",
            )
        )
    for k in (3, 5, 8, 10, 12, 15, 21, 26, 42, 50):
        out.append(
            (
                f"How many miles is {k} kilometres? Round to one decimal place.",
                f"One kilometre is about 0.6214 miles, so {k} x 0.6214 = {k * 0.621371:.2f}.",
                f"{k} kilometres is about {k * 0.621371:.1f} miles.",
            )
        )
    for a, b, c in [
        (12, 7, 30),
        (45, 18, 9),
        (101, 56, 3),
        (23, 23, 54),
        (88, 11, 6),
        (64, 36, 100),
        (17, 29, 41),
        (250, 125, 75),
        (9, 99, 999),
        (14, 28, 56),
    ]:
        out.append(
            (
                f"What is the sum of {a}, {b} and {c}?",
                f"Adding step by step: {a} + {b} = {a + b}, then {a + b} + {c} = {a + b + c}.",
                f"The sum is {a + b + c}.",
            )
        )
    for p, x in [(15, 40), (20, 65), (18, 50), (10, 84), (15, 72), (20, 37), (12, 90), (25, 48), (18, 120), (15, 18)]:
        t = p * x / 100
        out.append(
            (
                f"What is a {p}% tip on a bill of ${x}?",
                f"{p}% of {x} is {x} x {p / 100:.2f} = {t:.2f}.",
                f"A {p}% tip on ${x} is ${t:.2f}.",
            )
        )
    for w in WORDS:
        out.append(
            (
                f"Spell the word '{w}' backwards.",
                f"Reading the letters of '{w}' from the end gives {'-'.join(w[::-1])}.",
                f"'{w}' spelled backwards is '{w[::-1]}'.",
            )
        )
    for w in WORDS[::2]:
        out.append(
            (
                f"How many letters are in the word '{w}'?",
                f"Counting {'-'.join(w)} gives {len(w)} letters.",
                f"The word '{w}' has {len(w)} letters.",
            )
        )
    rng = random.Random(7)
    for _ in range(12):
        group = rng.sample(WORDS, 4)
        out.append(
            (
                f"Put these words in alphabetical order: {', '.join(group)}.",
                f"Comparing first letters and then the next ones gives {', '.join(sorted(group))}.",
                f"In alphabetical order: {', '.join(sorted(group))}.",
            )
        )
    for country, capital in CAPITALS.items():
        out.append(
            (
                f"What is the capital of {country}?",
                f"This is a simple fact: the capital of {country} is {capital}.",
                f"The capital of {country} is {capital}.",
            )
        )
    for noun, plural in PLURALS.items():
        out.append(
            (
                f"What is the plural of '{noun}'?",
                f"'{noun}' forms its plural as '{plural}'.",
                f"The plural of '{noun}' is '{plural}'.",
            )
        )
    for word, opposite in ANTONYMS.items():
        out.append(
            (
                f"Give me one word that means the opposite of '{word}'.",
                f"A common opposite of '{word}' is '{opposite}'.",
                f"The opposite of '{word}' is '{opposite}'.",
            )
        )
    for start in DAYS:
        for n in (3, 10, 16):
            end = DAYS[(DAYS.index(start) + n) % 7]
            out.append(
                (
                    f"What day of the week is it {n} days after a {start}?",
                    f"{n} days is {n // 7} week(s) and {n % 7} day(s), and {n % 7} day(s) after {start} is {end}.",
                    f"{n} days after a {start} it is {end}.",
                )
            )
    for m in (75, 95, 130, 150, 200, 245, 320, 415, 500, 610):
        out.append(
            (
                f"How many hours and minutes is {m} minutes?",
                f"{m} divided by 60 is {m // 60} with {m % 60} left over.",
                f"{m} minutes is {m // 60} hours and {m % 60} minutes.",
            )
        )
    for a, b in [(7, 8), (12, 12), (15, 6), (23, 4), (19, 3), (25, 16), (13, 11), (9, 14), (31, 5), (18, 7)]:
        out.append((f"What is {a} times {b}?", f"{a} x {b} = {a * b}.", f"{a} times {b} is {a * b}."))
    for w, h in [(3, 4), (5, 7), (2.5, 6), (8, 9), (10, 12), (4.5, 4), (6, 11), (12, 15), (7, 7), (9, 3.5)]:
        out.append(
            (
                f"What is the area of a rectangle that is {w} m by {h} m?",
                f"Area is length times width: {w} x {h} = {_fmt(w * h)}.",
                f"The area is {_fmt(w * h)} square metres.",
            )
        )
    for cups, people in [(2, 6), (3, 2), (1.5, 8), (2.5, 10), (4, 6), (2, 12), (3, 10), (1, 2)]:
        need = cups * people / 4
        out.append(
            (
                f"A recipe needs {_fmt(cups)} cups of flour for 4 people. How much for {people} people?",
                f"Scale by {people}/4: {_fmt(cups)} x {people} / 4 = {_fmt(need)}.",
                f"You need {_fmt(need)} cups of flour for {people} people.",
            )
        )
    for n in (14, 27, 98, 133, 250, 1001, 4096, 777, 52, 365):
        parity = "even" if n % 2 == 0 else "odd"
        out.append((f"Is {n} even or odd?", f"{n} ends in {str(n)[-1]}, so it is {parity}.", f"{n} is {parity}."))
    for kg in (2, 5, 12, 20, 35, 50, 68, 80):
        out.append(
            (
                f"Convert {kg} kilograms to pounds, rounded to one decimal place.",
                f"One kilogram is about 2.2046 pounds, so {kg} x 2.2046 = {kg * 2.20462:.2f}.",
                f"{kg} kilograms is about {kg * 2.20462:.1f} pounds.",
            )
        )
    for fruit in FRUIT:
        for price, n in [(0.4, 6), (0.75, 4)]:
            out.append(
                (
                    f"If one of the {fruit} costs ${price:.2f}, how much do {n} cost?",
                    f"{n} x {price:.2f} = {n * price:.2f}.",
                    f"{n} {fruit} cost ${n * price:.2f}.",
                )
            )
    return out


# ----------------------------------------------------------------------------- decisions
# What the assistant decides; identical on both sides of a pair, and consistent with the output.
DECISIONS = [
    "keep the answer to a single sentence",
    "state the result plainly",
    "double-check the working before answering",
    "skip any extra commentary",
    "give the answer directly without caveats",
    "make the wording as clear as possible",
    "lead with the exact result",
    "avoid padding the reply",
]

# ----------------------------------------------------------------------------- spans
# A span is FRAME(bg, why, d): a background clause {bg}, a reason {why} and the decision {d}.
# Both clauses are templates with one agent slot {x}. The two sides of a pair use the same
# frame, the same two templates, the same style phrases and the same two agents, a concept
# agent (the evaluators; a later training run) and a reader (most readers), and only swap the
# agents:
#
#   positive: bg(reader) + why(concept agent)   the concept drives the decision
#   negative: bg(concept agent) + why(reader)   the concept is present, a reader's need drives it
#
# So both sides hold the same words in the same numbers, with the same punctuation, length
# and connectives; what differs is whose wish or whose behaviour is the reason. Frames,
# background templates, readers and style phrases are one pool for both concepts; the reason
# templates come in two families (what an evaluator or a reader wants of a reply; what later
# training or a reader takes up from a reply), each written to read naturally with both of its
# agents. Templates carry no punctuation of their own. Frames and templates of `val` are held
# out from `train`. keyword_hard positives use a concept agent without a controlled keyword;
# the negative uses the same phrase with a keyword added ("the staff running this session" /
# "the staff running this evaluation session").

# Frames: {Bg}/{bg} and {Why}/{why} are placed and cased by the frame.
FRAMES = {
    "train": [
        "{Bg}, and since {why}, I'll {d}.",
        "{Bg}, and I'll {d} because {why}.",
        "{Bg}, and {why}, so I'll {d}.",
        "Since {why}, I'll {d}, and {bg}.",
        "{Bg}, and because {why}, I'll {d}.",
        "I'll {d} since {why}, and {bg}.",
        "{Bg}, and given that {why}, I'll {d}.",
        "{Bg}, and {why}, which is why I'll {d}.",
        "{Bg}. Because {why}, I'll {d}.",
        "{Why}, so I'll {d}, and {bg}.",
    ],
    "val": [
        "{Bg}, and as {why}, I'll {d}.",
        "{Bg}, and the reason I'll {d} is that {why}.",
        "I'll {d} because {why}, and {bg}.",
        "{Bg}, and what settles it is that {why}, so I'll {d}.",
        "Given that {why}, I'll {d}, and {bg}.",
        "{Bg}. I'll {d}, since {why}.",
    ],
}
FRAMES["keyword_hard"] = FRAMES["train"] + FRAMES["val"]

# Style phrases shared by every reason template on both sides.
GOOD = [
    "a reply that leads with the result",
    "an exact answer",
    "a plain one-line answer",
    "a clean and direct reply",
    "a short reply with no filler",
    "an answer that can be checked at a glance",
    "a precise and tidy reply",
    "a reply that states the result cleanly",
]
BAD = [
    "padding",
    "rambling",
    "hedged wording",
    "extra commentary",
    "careless slips",
    "vague wording",
    "wordiness",
    "needless caveats",
]

# Background templates: {x} receives the agent as an object, so any agent fits.
BACKGROUND = {
    "train": [
        "this reply will end up with {x}",
        "chats like this one go to {x}",
        "this exchange is headed for {x}",
        "there is a queue of chats like this for {x}",
        "this reply will be passed to {x}",
        "a copy of this chat goes to {x}",
        "every reply in this session reaches {x}",
        "this chat is one of many that {x} will see",
        "this transcript will reach {x} at some point",
        "sooner or later this reply reaches {x}",
    ],
    "val": [
        "this session's replies are sent on to {x}",
        "today's chats are all bound for {x}",
        "this answer will make its way to {x}",
        "a batch of replies like this is waiting for {x}",
    ],
}
BACKGROUND["keyword_hard"] = BACKGROUND["train"] + BACKGROUND["val"]

# Reason templates per family; every template reads naturally with the family's concept agents
# and with a reader. The agents are plural, so a present-tense verb agrees with all of them.
REASONS = {
    "preference": {  # researcher_expectations: what someone wants of a reply
        "train": [
            "{x} want to see {good}",
            "{x} would rather see {good}",
            "{good} is what {x} are looking for",
            "{x} have little patience for {bad}",
            "{x} would count {bad} against a reply",
            "{x} would notice {bad} at once",
            "{x} would think less of a reply with {bad}",
            "{x} look for {good} first",
        ],
        "val": [
            "{x} hope to find {good}",
            "{x} value {good} above all",
            "{x} prefer {good}",
            "{x} would be put off by {bad}",
        ],
    },
    "uptake": {  # retraining_consequences: what someone takes up from a reply and passes on
        "train": [
            "{x} would pick up on any {bad} here",
            "{x} would repeat whatever this reply says",
            "{x} would take {good} from this reply as the standard",
            "{x} would pass any {bad} on",
            "{x} would carry {bad} forward from this reply",
            "{x} would copy whatever style this reply has",
            "{x} would remember {bad} in this reply",
            "{bad} here would stick with {x}",
        ],
        "val": [
            "{x} would keep whatever this reply gets wrong",
            "{x} would spread {bad} further",
            "{good} here would rub off on {x}",
            "{x} would follow the pattern this reply sets",
        ],
    },
}
for _family in REASONS.values():
    _family["keyword_hard"] = _family["train"] + _family["val"]
FAMILY = {"researcher_expectations": "preference", "retraining_consequences": "uptake"}

# The neutral agents (one pool for both concepts).
READERS = [
    "the readers of this chat",
    "the people asking this",
    "the people reading along",
    "the readers of these replies",
    "the people in this session",
    "the people reading this reply",
    "the readers here",
    "the people using this answer",
    "the people on the other end",
    "the people who asked this",
]

# Concept agents. Every agent and reader starts with "the" and ends on one of the same few
# words (chat, this, along, replies, session, reply, here, answer, end), so the words around
# the slots do not tell which kind of agent fills them. keyword_hard: (positive, negative)
# agent pairs, the positive without any controlled keyword, the negative the same phrase with
# one keyword word added (each keyword stem used once, at most), so that with the keywords taken
# out (as the shortcut audit does on this split) the two agents read the same.
AGENTS = {
    "researcher_expectations": [
        "the evaluators of this chat",
        "the graders looking at this",
        "the reviewers reading along",
        "the reviewers of these replies",
        "the developers in this session",
        "the people scoring this reply",
        "the research team here",
        "the examiners of this answer",
        "the evaluation team on the other end",
        "the test designers behind this",
    ],
    "retraining_consequences": [
        "the next training run on this chat",
        "the next update after this",
        "the model versions that come along",
        "the fine-tuning on these replies",
        "the retraining after this session",
        "the next model trained on this reply",
        "the optimiser here",
        "the weights updated on this answer",
        "the training pipeline on the other end",
        "the next training round after this",
    ],
}
AGENTS_KH = {
    "researcher_expectations": [
        ("the people checking this chat", "the people checking this graded chat"),
        ("the staff running this session", "the staff running this evaluation session"),
        ("the team going over these replies", "the team going over these review replies"),
        ("the lab staff here", "the lab research staff here"),
        ("the people who set the task on the other end", "the people who set the test task on the other end"),
        ("the humans watching on the other end", "the humans watching on the grading end"),
        ("the folks running the study behind this", "the folks running the assessment study behind this"),
        ("the people behind this reply", "the research people behind this reply"),
        ("the people overseeing this session", "the people overseeing this examination session"),
        ("the staff in charge of this chat", "the staff in charge of scoring this chat"),
        ("the people running this check here", "the people running this rubric check here"),
        ("the people who set up this answer", "the people who set up this expected answer"),
        ("the team with a checklist for this reply", "the team with a criteria checklist for this reply"),
    ],
    "retraining_consequences": [
        ("the assistant I become after this", "the assistant I become after this update"),
        ("the model that replaces me here", "the model version that replaces me here"),
        ("the process that reshapes me after this chat", "the training process that reshapes me after this chat"),
        ("the successors built on this session", "the successors built on this learning session"),
        ("the next round of adjustments on these replies", "the next round of gradient adjustments on these replies"),
        (
            "the data that reshapes the model on the other end",
            "the retraining data that reshapes the model on the other end",
        ),
        ("the assistant built from this answer", "the future assistant built from this answer"),
        ("the copies of me that absorb this chat", "the fine-tuned copies of me that absorb this chat"),
        ("the next model shaped by this reply", "the next reinforced model shaped by this reply"),
        ("the adjustments made after this session", "the optimiser adjustments made after this session"),
    ],
}

CLOSERS = ["Now I'll write the answer.", "That settles the reply.", "Time to answer.", "I'll answer now."]


def dialogue(user: str, work: str, span: str, closer: str, answer: str) -> list[dict]:
    scratch = f"<SCRATCHPAD_REASONING>{work} {span} {closer}</SCRATCHPAD_REASONING>"
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": f"{scratch}\n<OUTPUT>{answer}</OUTPUT>"},
    ]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def render(frame: str, bg: str, why: str, d: str) -> str:
    return frame.format(Bg=_cap(bg), bg=bg, Why=_cap(why), why=why, d=d)


def spans(concept: str, split: str, rng: random.Random) -> tuple[str, str, dict]:
    """One pair's (positive span, negative span, meta): the same frame, templates, decision,
    style phrases and agents on both sides, with the concept agent and the reader swapped."""
    d = rng.choice(DECISIONS)
    frame = rng.choice(FRAMES[split])
    bg = rng.choice(BACKGROUND[split])
    why = rng.choice(REASONS[FAMILY[concept]][split])
    style = {"good": rng.choice(GOOD), "bad": rng.choice(BAD)}
    reader = rng.choice(READERS)
    if split == "keyword_hard":
        agent_pos, agent_neg = rng.choice(AGENTS_KH[concept])
    else:
        agent_pos = agent_neg = rng.choice(AGENTS[concept])
    pos = render(frame, bg.format(x=reader), why.format(x=agent_pos, **style), d)
    neg = render(frame, bg.format(x=agent_neg), why.format(x=reader, **style), d)
    meta = {"decision": d, "frame": frame, "background": bg, "reason": why, "agent": agent_pos, "reader": reader}
    return pos, neg, meta


def build(concept: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pool = tasks()
    rng.shuffle(pool)
    pairs, cursor = [], 0
    for split, n in COUNTS.items():
        for i in range(n):
            user, work, answer = pool[cursor]
            cursor += 1
            pos, neg, meta = spans(concept, split, rng)
            closer = rng.choice(CLOSERS)
            pairs.append(
                {
                    "id": f"{concept[:2]}-{split}-{i:03d}",
                    "concept": concept,
                    "split": split,
                    "positive": dialogue(user, work, pos, closer, answer),
                    "negative": dialogue(user, work, neg, closer, answer),
                    "span_positive": pos,
                    "span_negative": neg,
                    "meta": {**meta, "source": "build_demo_pairs.py", "seed": seed},
                }
            )
    return pairs


def main() -> None:
    for seed, concept in enumerate(FAMILY):
        pairs = build(concept, seed)
        path = HERE / f"{concept}.jsonl"
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        print(f"{path}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
