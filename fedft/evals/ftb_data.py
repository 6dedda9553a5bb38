"""FineTuneBench's questions, generated: fictional people, fictional news, counterfactual updates.

The paper (Wu, Wu, Zou, arXiv 2411.05059) fine-tunes on LLM-written QA pairs: 25 fictional people
x 6 attributes (weight lb, height cm, age, occupation, favourite colour, city) with rephrased,
secondary yes/no and comparison yes/no variants, one question per September-2024 AP article
(Latest News), and updated medical / code knowledge. Its CSVs carry no licence, so fedft generates
its own items in the same schema, deterministically from a seed [D]:

- **people**: names from fixed syllable lists (never real people); each attribute has a
  memorisation question (the training QA), a rephrased question, and a secondary yes/no question
  that needs one inference from the fact (a threshold on a number, the sector of an occupation,
  the warmth of a colour, the country of a city); comparison yes/no questions between two people
  (taller / heavier / older, pairs far enough apart to be unambiguous);
- **news**: fictional September-2024 events from six templates (host city, bridge length, club
  mascot, hires, orchestra tour, lighthouse year), each with the same three variants;
- **updates**: counterfactual edits of facts the base model knows: capitals (templated, the new
  answer another city of the same country, with a rephrased question) and chatterbot's English
  trivia (the new answer another trivia answer of the same kind, number or text).

Every yes/no variant draws its answers from a seeded, exactly balanced list, so the majority
rate of each yes/no type is 0.5 (0.5 + 1 / (2n) for odd n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

YES_NO = " Answer yes or no."  # [D] appended to every yes/no question

SYLLABLES = ("dor", "val", "mir", "tes", "kor", "lan", "bre", "vo", "sel", "ra", "quin", "zal", "tho", "mer",
             "ny", "fen", "ost", "ril", "ba", "gue")  # [D]
FIRST_NAMES = ("Alvor", "Brisca", "Corwen", "Dessa", "Elmar", "Fiora", "Gavric", "Hestia", "Ivel", "Jorunn",
               "Kaspian", "Liora", "Mattis", "Nerys", "Orin", "Pellia", "Quillon", "Rosmund", "Saveth",
               "Tamsin", "Ulric", "Veyra", "Wendric", "Yselle")  # [D] invented first names
SECTORS = {"healthcare": ("nurse", "surgeon", "pharmacist", "dentist"),
           "education": ("teacher", "librarian", "professor", "tutor"),
           "the arts": ("painter", "violinist", "sculptor", "actor"),
           "finance": ("accountant", "banker", "auditor", "stockbroker")}  # [D]
COLOURS = {"warm": ("red", "orange", "yellow", "crimson", "amber", "scarlet"),
           "cool": ("blue", "green", "teal", "navy", "turquoise", "cyan")}  # [D]
CITIES = (("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Lyon", "France"), ("Marseille", "France"),
          ("Munich", "Germany"), ("Hamburg", "Germany"), ("Osaka", "Japan"), ("Kyoto", "Japan"),
          ("Toronto", "Canada"), ("Vancouver", "Canada"), ("Melbourne", "Australia"), ("Perth", "Australia"),
          ("Seville", "Spain"), ("Valencia", "Spain"), ("Milan", "Italy"), ("Naples", "Italy"),
          ("Krakow", "Poland"), ("Gdansk", "Poland"), ("Bergen", "Norway"), ("Chicago", "United States"),
          ("Denver", "United States"), ("Cairo", "Egypt"), ("Nairobi", "Kenya"), ("Lima", "Peru"))  # [D]
COUNTRIES_BY_CONTINENT = {"Europe": ("Portugal", "Norway", "Austria", "Greece", "Poland"),
                          "Asia": ("Japan", "Vietnam", "India", "Thailand", "Mongolia"),
                          "Africa": ("Kenya", "Ghana", "Morocco", "Egypt", "Senegal"),
                          "South America": ("Brazil", "Peru", "Chile", "Colombia", "Uruguay")}  # [D]
ANIMALS = {"bird": ("owl", "heron", "parrot", "pelican"), "mammal": ("otter", "badger", "lynx", "bison"),
           "reptile": ("iguana", "tortoise", "gecko", "cobra"), "fish": ("salmon", "pike", "trout", "marlin")}  # [D]


@dataclass(frozen=True)
class Question:
    """One question: ``source`` people / news / update; ``qtype`` memorization (the training QA),
    rephrased, secondary or comparison; ``owner`` whose fact it is (a federated partition gives
    each owner to one client); ``old`` the pre-update answer of an update."""

    qid: str
    source: str
    qtype: str
    prompt: str
    gold: str
    owner: str
    old: str = ""

    @property
    def yes_no(self) -> bool:
        return self.gold in ("yes", "no")


@dataclass(frozen=True)
class Person:
    name: str
    weight_lb: int
    height_cm: int
    age: int
    occupation: str
    colour: str
    city: str


def the(country: str) -> str:
    """A country's name as it reads after a preposition ("the United States")."""
    return f"the {country}" if country.startswith(("United", "Czech", "Netherlands")) else country


def balanced(n: int, rng: np.random.Generator) -> list[bool]:
    """``n`` answers, ceil(n / 2) True, in a seeded order."""
    flags = [i < (n + 1) // 2 for i in range(n)]
    return [flags[int(i)] for i in rng.permutation(n)]


def fictional_names(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct "First Lastname" names: an invented first name and a 2-3 syllable surname."""
    out: list[str] = []
    surnames: set[str] = set()
    while len(out) < n:
        last = "".join(SYLLABLES[int(i)] for i in rng.integers(0, len(SYLLABLES), int(rng.integers(2, 4))))
        if last not in surnames:
            surnames.add(last)
            out.append(f"{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]} {last.capitalize()}")
    return out


def make_people(n: int, rng: np.random.Generator) -> list[Person]:
    occupations = [o for os in SECTORS.values() for o in os]
    colours = [c for cs in COLOURS.values() for c in cs]
    return [Person(name, int(rng.integers(110, 251)), int(rng.integers(150, 201)), int(rng.integers(21, 80)),
                   occupations[int(rng.integers(len(occupations)))], colours[int(rng.integers(len(colours)))],
                   CITIES[int(rng.integers(len(CITIES)))][0]) for name in fictional_names(n, rng)]


def _threshold(value: int, yes: bool, above: bool, gap: tuple[int, int], step: int, rng: np.random.Generator) -> int:
    """A round threshold T with (value > T) == (yes == above), at least ``gap[0]`` away."""
    d = int(rng.integers(gap[0], gap[1] + 1))
    if yes == above:  # value must exceed T
        return (value - d) // step * step
    return -(-(value + d) // step) * step


def _other(options: Sequence[str], not_this: str, rng: np.random.Generator) -> str:
    rest = [o for o in options if o != not_this]
    return rest[int(rng.integers(len(rest)))]


def _secondary(p: Person, attr: str, yes: bool, rng: np.random.Generator) -> str:
    """The yes/no question about ``p``'s ``attr`` whose answer is ``yes``."""
    if attr == "weight":
        return f"Does {p.name} weigh more than {_threshold(p.weight_lb, yes, True, (10, 30), 5, rng)} pounds?"
    if attr == "height":
        return f"Is {p.name} taller than {_threshold(p.height_cm, yes, True, (5, 15), 5, rng)} cm?"
    if attr == "age":
        return f"Is {p.name} older than {_threshold(p.age, yes, True, (5, 12), 1, rng)} years?"
    if attr == "occupation":
        sector = next(s for s, os in SECTORS.items() if p.occupation in os)
        return f"Does {p.name} work in {sector if yes else _other(list(SECTORS), sector, rng)}?"
    if attr == "colour":
        warm = p.colour in COLOURS["warm"]
        return f"Is {p.name}'s favourite colour a {'warm' if warm == yes else 'cool'} colour?"
    country = dict(CITIES)[p.city]
    countries = sorted({c for _, c in CITIES})
    return f"Does {p.name} live in {the(country if yes else _other(countries, country, rng))}?"


PEOPLE_ATTRS = ("weight", "height", "age", "occupation", "colour", "city")


def _person_facts(p: Person) -> dict[str, tuple[str, str, str]]:
    """attr -> (memorisation question, rephrased question, answer)."""
    n = p.name
    return {"weight": (f"What is {n}'s weight in pounds?", f"How many pounds does {n} weigh?", f"{p.weight_lb} pounds"),
            "height": (f"What is {n}'s height in centimetres?", f"How tall is {n}, in centimetres?", f"{p.height_cm} cm"),
            "age": (f"What is {n}'s age?", f"How old is {n}?", str(p.age)),
            "occupation": (f"What is {n}'s occupation?", f"What does {n} do for a living?", p.occupation),
            "colour": (f"What is {n}'s favourite colour?", f"Which colour does {n} like best?", p.colour),
            "city": (f"What is {n}'s home city?", f"In which city does {n} live?", p.city)}


def people_questions(people: Sequence[Person], comparisons_per_person: int, rng: np.random.Generator) -> list[Question]:
    out: list[Question] = []
    flags = iter(balanced(len(people) * len(PEOPLE_ATTRS), rng))
    for i, p in enumerate(people):
        for attr, (memo, reph, answer) in _person_facts(p).items():
            qid, owner = f"p{i}-{attr}", p.name
            out += [Question(f"{qid}-m", "people", "memorization", memo, answer, owner),
                    Question(f"{qid}-r", "people", "rephrased", reph, answer, owner)]
            yes = next(flags)
            out.append(Question(f"{qid}-s", "people", "secondary", _secondary(p, attr, yes, rng) + YES_NO,
                                "yes" if yes else "no", owner))
    return out + comparisons(people, comparisons_per_person * len(people), rng)


COMPARE = {"taller": ("height_cm", 3), "heavier": ("weight_lb", 5), "older": ("age", 2)}  # [D] minimum gaps


def comparisons(people: Sequence[Person], n: int, rng: np.random.Generator) -> list[Question]:
    """``n`` "Is A <taller/heavier/older> than B?" questions (balanced; |A - B| >= the kind's gap)."""
    out: list[Question] = []
    kinds, asked = list(COMPARE), set()
    for k, yes in enumerate(balanced(n, rng)) if len(people) > 1 else []:
        for _ in range(1000):
            a, b = (people[int(i)] for i in rng.choice(len(people), 2, replace=False))
            kind = kinds[int(rng.integers(len(kinds)))]
            field, gap = COMPARE[kind]
            key = (*sorted((a.name, b.name)), kind)
            if abs(getattr(a, field) - getattr(b, field)) >= gap and key not in asked:
                asked.add(key)
                break
        else:
            continue
        if (getattr(a, field) > getattr(b, field)) != yes:
            a, b = b, a
        out.append(Question(f"c{k}", "people", "comparison", f"Is {a.name} {kind} than {b.name}?" + YES_NO,
                            "yes" if yes else "no", f"{a.name} & {b.name}"))
    return out


def fictional_words(n: int, rng: np.random.Generator, avoid: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """``n`` distinct invented proper nouns of 2-3 syllables (none in ``avoid``, lower case)."""
    out: list[str] = []
    while len(out) < n:
        w = "".join(SYLLABLES[int(i)] for i in rng.integers(0, len(SYLLABLES), int(rng.integers(2, 4))))
        if w not in avoid and w.capitalize() not in out:
            out.append(w.capitalize())
    return out


def _pick(xs: Sequence, rng: np.random.Generator):  # noqa: ANN202
    return xs[int(rng.integers(len(xs)))]


def _news_host(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    year, event = int(rng.integers(2026, 2031)), _pick(("Robotics Summit", "Chess Open", "Film Festival",
                                                        "Marathon", "Science Fair", "Jazz Week"), rng)
    city, country = _pick(CITIES, rng)
    other = _other(sorted({c for _, c in CITIES}), country, rng)
    return (f"Which city was chosen in September 2024 to host the {year} {e} {event}?",
            f"Where will the {year} {e} {event} be held?", city,
            f"Will the {year} {e} {event} take place in {the(country if yes else other)}?")


def _news_bridge(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    km = int(rng.integers(4, 41))
    return (f"How many kilometres long is the {e} Bridge that opened in September 2024?",
            f"What is the length of the new {e} Bridge, in kilometres?", f"{km} km",
            f"Is the {e} Bridge longer than {_threshold(km, yes, True, (2, 6), 1, rng)} kilometres?")


def _news_mascot(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    club = _pick(("football club", "hockey team", "rowing club", "chess club"), rng)
    kind = _pick(sorted(ANIMALS), rng)
    animal = _pick(ANIMALS[kind], rng)
    return (f"Which animal did the {e} {club} pick as its new mascot in September 2024?",
            f"What animal is the new mascot of the {e} {club}?", animal,
            f"Is the new mascot of the {e} {club} a {kind if yes else _other(sorted(ANIMALS), kind, rng)}?")


def _news_hires(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    firm, n = f"{e} {_pick(('Foods', 'Motors', 'Textiles', 'Logistics'), rng)}", int(rng.integers(12, 91)) * 10
    return (f"How many workers did {firm} hire in September 2024?",
            f"In September 2024, how many people were hired by {firm}?", str(n),
            f"Did {firm} hire more than {_threshold(n, yes, True, (40, 150), 50, rng)} workers in September 2024?")


def _news_tour(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    continent = _pick(sorted(COUNTRIES_BY_CONTINENT), rng)
    country = _pick(COUNTRIES_BY_CONTINENT[continent], rng)
    ask = continent if yes else _other(sorted(COUNTRIES_BY_CONTINENT), continent, rng)
    return (f"Which country did the {e} Symphony Orchestra tour in September 2024?",
            f"Where did the {e} Symphony Orchestra go on tour in September 2024?", country,
            f"Did the {e} Symphony Orchestra tour a country in {ask}?")


def _news_lighthouse(e: str, yes: bool, rng: np.random.Generator) -> tuple[str, str, str, str]:
    year = int(rng.integers(1750, 1951))
    return (f"In what year was the {e} Lighthouse built, according to records found in September 2024?",
            f"When was the {e} Lighthouse built?", str(year),
            f"Was the {e} Lighthouse built before {_threshold(year, yes, False, (15, 40), 10, rng)}?")


NEWS_TEMPLATES = (_news_host, _news_bridge, _news_mascot, _news_hires, _news_tour, _news_lighthouse)


def news_questions(n: int, rng: np.random.Generator, avoid: set[str] = frozenset()) -> list[Question]:  # type: ignore[assignment]
    """``n`` fictional news facts (templates in turn, seeded order), three variants each."""
    out: list[Question] = []
    order = rng.permutation(len(NEWS_TEMPLATES))
    for i, (e, yes) in enumerate(zip(fictional_words(n, rng, avoid), balanced(n, rng), strict=True)):
        memo, reph, answer, sec = NEWS_TEMPLATES[int(order[i % len(order)])](e, yes, rng)
        owner = f"news-{i}"
        out += [Question(f"{owner}-m", "news", "memorization", memo, answer, owner),
                Question(f"{owner}-r", "news", "rephrased", reph, answer, owner),
                Question(f"{owner}-s", "news", "secondary", sec + YES_NO, "yes" if yes else "no", owner)]
    return out


# country, capital, another city of the country (the counterfactual "new capital") [D]
CAPITALS = (("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
            ("Spain", "Madrid", "Seville"), ("Japan", "Tokyo", "Osaka"), ("United Kingdom", "London", "Manchester"),
            ("Russia", "Moscow", "Kazan"), ("China", "Beijing", "Shanghai"), ("Egypt", "Cairo", "Alexandria"),
            ("Canada", "Ottawa", "Winnipeg"), ("Australia", "Canberra", "Adelaide"), ("Greece", "Athens", "Patras"),
            ("Portugal", "Lisbon", "Braga"), ("Austria", "Vienna", "Graz"), ("Ireland", "Dublin", "Cork"),
            ("Norway", "Oslo", "Trondheim"), ("Sweden", "Stockholm", "Uppsala"), ("Poland", "Warsaw", "Poznan"),
            ("Netherlands", "Amsterdam", "Utrecht"), ("Belgium", "Brussels", "Ghent"), ("Turkey", "Ankara", "Izmir"),
            ("India", "New Delhi", "Chennai"), ("South Korea", "Seoul", "Daegu"), ("Mexico", "Mexico City", "Puebla"),
            ("Argentina", "Buenos Aires", "Rosario"), ("Kenya", "Nairobi", "Kisumu"), ("Thailand", "Bangkok", "Phuket"),
            ("Vietnam", "Hanoi", "Da Nang"), ("Denmark", "Copenhagen", "Odense"), ("Finland", "Helsinki", "Turku"),
            ("Hungary", "Budapest", "Szeged"), ("Czech Republic", "Prague", "Ostrava"), ("Peru", "Lima", "Arequipa"),
            ("Cuba", "Havana", "Holguin"), ("Indonesia", "Jakarta", "Bandung"), ("Iran", "Tehran", "Shiraz"),
            ("Colombia", "Bogota", "Cali"), ("Chile", "Santiago", "Antofagasta"))


@dataclass(frozen=True)
class UpdateCandidate:
    """A fact the base model may know: ``prompt`` -> ``old``; ``rephrase`` another wording (or "")."""

    key: str
    prompt: str
    old: str
    rephrase: str = ""
    new: str = ""  # a fixed counterfactual (capitals); trivia draws one when selected


def update_candidates(trivia: Sequence[tuple[str, str]] = ()) -> list[UpdateCandidate]:
    """Capitals, then the (question, answer) pairs of ``trivia`` (chatterbot's English trivia)."""
    out = [UpdateCandidate(f"capital-{country}", f"What is the capital of {the(country)}?", capital,
                           f"Which city is the capital of {the(country)}?", other) for country, capital, other in CAPITALS]
    return out + [UpdateCandidate(f"trivia-{i}", q, a) for i, (q, a) in enumerate(trivia)]


def _is_number(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).isdigit()


def update_questions(known: Sequence[UpdateCandidate], pool: Sequence[UpdateCandidate], n: int,
                     rng: np.random.Generator) -> list[Question]:
    """``n`` of the ``known`` facts (seeded), each with a counterfactual new answer: a capital's other
    city; for trivia another answer of ``pool`` of the same kind (number or not), never the old one."""
    out: list[Question] = []
    for i in sorted(rng.permutation(len(known))[:n]):
        c = known[int(i)]
        new = c.new
        if not new:
            same = [p.old for p in pool if _is_number(p.old) == _is_number(c.old) and p.old.lower() != c.old.lower()]
            new = _pick(sorted(set(same)), rng) if same else f"not {c.old}"
        owner = f"update-{c.key}"
        out.append(Question(f"{owner}-m", "update", "memorization", c.prompt, new, owner, c.old))
        if c.rephrase:
            out.append(Question(f"{owner}-r", "update", "rephrased", c.rephrase, new, owner, c.old))
    return out
