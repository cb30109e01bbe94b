"""The city → state study over many prompts: writes the prompts, traces them into a store, aggregates them and
measures, per graph, how much of the answer flows through the city's own positions.

Claim tested (entity-attribute case study): "X is in the state of" is answered by features at the city's tokens
that drive state features at the last position, for every city, not for one lucky prompt.

    python reports/many/city_state.py prompts            # writes reports/many/city_state/prompts.jsonl
    mechscope trace-many reports/many/city_state/prompts.jsonl --store runs/city_state
    python reports/many/city_state.py analyse runs/city_state   # writes reports/many/city_state/*.json

Templates × cities (famous and lesser-known, 3 templates × 40 cities = 120 prompts); `expect` is the state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).with_name("city_state")
TEMPLATES = {
    "is": "{city} is in the state of",
    "cityof": "The city of {city} is located in the state of",
    "acity": "{city} is a city in the state of",
}
FAMOUS = {
    "Dallas": "Texas", "Houston": "Texas", "Austin": "Texas", "San Antonio": "Texas",
    "Los Angeles": "California", "San Francisco": "California", "San Diego": "California",
    "Sacramento": "California", "Miami": "Florida", "Orlando": "Florida", "Tampa": "Florida",
    "Chicago": "Illinois", "Seattle": "Washington", "Boston": "Massachusetts", "Atlanta": "Georgia",
    "Denver": "Colorado", "Phoenix": "Arizona", "Las Vegas": "Nevada", "Detroit": "Michigan",
    "Philadelphia": "Pennsylvania",
}  # fmt: skip
LESSER = {
    "Lubbock": "Texas", "Amarillo": "Texas", "Fresno": "California", "Bakersfield": "California",
    "Tallahassee": "Florida", "Gainesville": "Florida", "Peoria": "Illinois", "Spokane": "Washington",
    "Worcester": "Massachusetts", "Savannah": "Georgia", "Boulder": "Colorado", "Tucson": "Arizona",
    "Reno": "Nevada", "Lansing": "Michigan", "Scranton": "Pennsylvania", "Akron": "Ohio", "Dayton": "Ohio",
    "Knoxville": "Tennessee", "Shreveport": "Louisiana", "Spartanburg": "South Carolina",
}  # fmt: skip


def write_prompts() -> Path:
    HERE.mkdir(parents=True, exist_ok=True)
    rows = []
    for group, cities in (("famous", FAMOUS), ("lesser", LESSER)):
        for city, state in cities.items():
            for t, tmpl in TEMPLATES.items():
                pid = f"{t}-{city.lower().replace(' ', '-')}"
                rows.append({"id": pid, "prompt": tmpl.format(city=city), "group": group, "expect": f" {state}"})
    out = HERE / "prompts.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["prompts"]:
        print(write_prompts())
    elif sys.argv[1:2] == ["analyse"]:
        from city_state_analysis import analyse  # noqa: E402 (beside this file)

        analyse(Path(sys.argv[2]), HERE)
    else:
        sys.exit(__doc__)
