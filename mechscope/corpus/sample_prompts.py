"""Seed prompts for the sampled corpus: entity names (WordNet's instance synsets, else a built-in list), everyday
topics, numbers and arithmetic, in English, French, German, Spanish and Chinese, as one seeded endless stream.

>>> from itertools import islice
>>> list(islice(seed_prompts("train", 1, ["Dallas"]), 1))  # doctest: +SKIP
['Dallas is']
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from mechscope.corpus.sources import WORDNET_NOUNS, is_heldout

SAMPLED_VERSION = "sampled-v1"

# Used when WordNet is not installed (the shipped held-out split was made with WordNet; see docs/lens.md).
ENTITIES = [
    "Texas",
    "California",
    "Florida",
    "Ohio",
    "Nevada",
    "Alaska",
    "Hawaii",
    "Chicago",
    "Houston",
    "Seattle",
    "Denver",
    "Boston",
    "Atlanta",
    "Miami",
    "Phoenix",
    "Detroit",
    "London",
    "Manchester",
    "Edinburgh",
    "Dublin",
    "Lisbon",
    "Barcelona",
    "Vienna",
    "Prague",
    "Warsaw",
    "Budapest",
    "Athens",
    "Istanbul",
    "Cairo",
    "Nairobi",
    "Lagos",
    "Johannesburg",
    "Mumbai",
    "Delhi",
    "Bangkok",
    "Singapore",
    "Seoul",
    "Shanghai",
    "Beijing",
    "Osaka",
    "Sydney",
    "Melbourne",
    "Toronto",
    "Vancouver",
    "Montreal",
    "Mexico",
    "Brazil",
    "Argentina",
    "Chile",
    "Peru",
    "Canada",
    "Norway",
    "Sweden",
    "Finland",
    "Poland",
    "Greece",
    "Turkey",
    "Egypt",
    "Kenya",
    "Nigeria",
    "India",
    "China",
    "Japan",
    "Korea",
    "Vietnam",
    "Indonesia",
    "Australia",
    "Shakespeare",
    "Newton",
    "Darwin",
    "Galileo",
    "Aristotle",
    "Plato",
    "Napoleon",
    "Cleopatra",
    "Gandhi",
    "Lincoln",
    "Mandela",
    "Picasso",
    "Rembrandt",
    "Bach",
    "Chopin",
    "Tolstoy",
    "Dante",
    "Cervantes",
    "Goethe",
    "Confucius",
    "Amazon",
    "Nile",
    "Danube",
    "Everest",
    "Sahara",
    "Mississippi",
    "Himalayas",
    "Andes",
    "Alps",
    "Pacific",
    "Atlantic",
]
TOPICS = [
    "the weather",
    "cooking rice",
    "football",
    "the ocean",
    "the history of trains",
    "gardening",
    "chess",
    "the moon",
    "volcanoes",
    "bees",
    "coffee",
    "learning a language",
    "the human heart",
    "electric cars",
    "ancient Rome",
    "photosynthesis",
    "the Olympic Games",
    "jazz music",
    "mountains",
    "the internet",
    "birds",
    "a birthday party",
    "rivers",
    "the solar system",
    "bread",
    "a small village",
    "winter",
    "dinosaurs",
    "the stock market",
    "painting",
    "a job interview",
    "basketball",
    "tea",
    "elections",
]
TEMPLATES = {
    "en": [
        "{e} is",
        "{e} was",
        "Here is a short encyclopedia entry.\n\n{e}",
        "Q: What is {e} known for?\nA:",
        "Facts about {e}:\n1.",
        "Where is {e}? It is",
        "{e} is famous for",
    ],
    "fr": ["{e} est", "Voici un court article.\n\n{e}", "Question : que savez-vous de {e} ?\nRéponse :"],
    "de": ["{e} ist", "Ein kurzer Lexikonartikel.\n\n{e}", "Frage: Was ist {e}?\nAntwort:"],
    "es": ["{e} es", "Un breve artículo de enciclopedia.\n\n{e}", "Pregunta: ¿qué es {e}?\nRespuesta:"],
    "zh": ["{e}是", "关于{e}的简短介绍：\n\n", "问：{e}有什么特点？\n答："],
}
TOPIC_TEMPLATES = [
    "A short article about {t}.\n\n",
    "Let me tell you about {t}.",
    "Some facts about {t}:\n-",
    "Un article sur {t} :\n\n",
    "Ein Text über {t}:\n\n",
    "Un texto sobre {t}:\n\n",
]
LANG_WEIGHTS = {"en": 0.55, "fr": 0.12, "de": 0.11, "es": 0.11, "zh": 0.11}


def entity_names() -> tuple[list[str], str]:
    """(names, source): WordNet's instance-synset names when installed (sorted, deduplicated), else ENTITIES."""
    if WORDNET_NOUNS.exists():
        from mechscope.corpus.sources import wordnet_sentences

        names = sorted({t.split(" is ", 1)[0] for _, t in wordnet_sentences()})
        names = [n for n in names if 2 < len(n) <= 40]
        if names:
            return names, "wordnet"
    return list(ENTITIES), "builtin-list"


def seed_prompts(split: str, seed: int, names: list[str]) -> Iterator[str]:
    """An endless, seeded stream of prompts: ~60% entities (in five languages), ~20% topics, ~20% numbers."""
    rng = random.Random(f"{SAMPLED_VERSION}-{split}-{seed}")
    mine = [n for n in names if is_heldout(n) == (split == "heldout")] or names
    langs, weights = zip(*LANG_WEIGHTS.items())
    while True:
        r = rng.random()
        if r < 0.6:
            lang = rng.choices(langs, weights)[0]
            yield rng.choice(TEMPLATES[lang]).format(e=rng.choice(mine))
        elif r < 0.8:
            yield rng.choice(TOPIC_TEMPLATES).format(t=rng.choice(TOPICS))
        else:
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(1100, 2024)
            yield rng.choice(
                [
                    f"{a} + {b} = ",
                    f"Question: What is {a} plus {b}?\nAnswer:",
                    f"{a % 13} × {b % 13} =",
                    f"Compute {a} - {b % a}. Step by step:",
                    f"In {c},",
                    f"The year {c} was",
                    f"Calculez {a} + {b} :",
                    f"Rechne: {a} mal {b % 10} ist",
                    f"{a}加{b}等于",
                ]
            )
