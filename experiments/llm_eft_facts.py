"""The facts and judges of experiments/llm_eft.py: country capitals (the knowledge probe), the
answer format learnt in fine-tuning ("Answer: <X>."), and the two judges (the fact in the answer,
whatever its form; the answer in the format).

Countries whose capital's name contains the country's (Luxembourg, Singapore, Kuwait City, ...)
or a near-spelling of it (Tunis / Tunisia), and disputed capitals (Israel, Taiwan), are left out:
repeating the question would count as knowing the answer. Alternative spellings count.
"""

from __future__ import annotations

import re
import unicodedata

# country -> capital (or several accepted names; the first is the training target) [D]
CAPITALS: dict[str, tuple[str, ...]] = {
    "France": ("Paris",), "Germany": ("Berlin",), "Italy": ("Rome",), "Spain": ("Madrid",),
    "Portugal": ("Lisbon",), "United Kingdom": ("London",), "Ireland": ("Dublin",), "Belgium": ("Brussels",),
    "Netherlands": ("Amsterdam",), "Austria": ("Vienna",), "Switzerland": ("Bern", "Berne"), "Poland": ("Warsaw",),
    "Czech Republic": ("Prague",), "Hungary": ("Budapest",), "Greece": ("Athens",), "Sweden": ("Stockholm",),
    "Norway": ("Oslo",), "Denmark": ("Copenhagen",), "Finland": ("Helsinki",), "Iceland": ("Reykjavik",),
    "Russia": ("Moscow",), "Ukraine": ("Kyiv", "Kiev"), "Romania": ("Bucharest",), "Bulgaria": ("Sofia",),
    "Serbia": ("Belgrade",), "Croatia": ("Zagreb",), "Slovakia": ("Bratislava",), "Slovenia": ("Ljubljana",),
    "Estonia": ("Tallinn",), "Latvia": ("Riga",), "Lithuania": ("Vilnius",), "Belarus": ("Minsk",),
    "Albania": ("Tirana",), "Turkey": ("Ankara",), "Egypt": ("Cairo",), "Morocco": ("Rabat",),
    "Algeria": ("Algiers",), "Libya": ("Tripoli",), "Nigeria": ("Abuja",), "Ghana": ("Accra",),
    "Kenya": ("Nairobi",), "Ethiopia": ("Addis Ababa",), "Uganda": ("Kampala",), "Tanzania": ("Dodoma",),
    "Senegal": ("Dakar",), "Zimbabwe": ("Harare",), "Zambia": ("Lusaka",), "Angola": ("Luanda",),
    "Sudan": ("Khartoum",), "Somalia": ("Mogadishu",), "Rwanda": ("Kigali",), "Madagascar": ("Antananarivo",),
    "Japan": ("Tokyo",), "China": ("Beijing", "Peking"), "South Korea": ("Seoul",), "North Korea": ("Pyongyang",),
    "India": ("New Delhi",), "Pakistan": ("Islamabad",), "Bangladesh": ("Dhaka",), "Nepal": ("Kathmandu",),
    "Sri Lanka": ("Colombo", "Sri Jayawardenepura Kotte"), "Thailand": ("Bangkok",), "Vietnam": ("Hanoi",),
    "Cambodia": ("Phnom Penh",), "Laos": ("Vientiane",), "Malaysia": ("Kuala Lumpur",), "Indonesia": ("Jakarta",),
    "Philippines": ("Manila",), "Mongolia": ("Ulaanbaatar", "Ulan Bator"), "Afghanistan": ("Kabul",),
    "Iran": ("Tehran",), "Iraq": ("Baghdad",), "Syria": ("Damascus",), "Lebanon": ("Beirut",), "Jordan": ("Amman",),
    "Saudi Arabia": ("Riyadh",), "Yemen": ("Sanaa", "Sana'a"), "Oman": ("Muscat",), "Qatar": ("Doha",),
    "Kazakhstan": ("Astana", "Nur-Sultan"), "Uzbekistan": ("Tashkent",), "Georgia": ("Tbilisi",),
    "Armenia": ("Yerevan",), "Azerbaijan": ("Baku",), "United States": ("Washington",), "Canada": ("Ottawa",),
    "Cuba": ("Havana",), "Jamaica": ("Kingston",), "Haiti": ("Port-au-Prince",), "Honduras": ("Tegucigalpa",),
    "Nicaragua": ("Managua",), "Costa Rica": ("San Jose",), "Colombia": ("Bogota",), "Venezuela": ("Caracas",),
    "Ecuador": ("Quito",), "Peru": ("Lima",), "Brazil": ("Brasilia",), "Argentina": ("Buenos Aires",),
    "Chile": ("Santiago",), "Uruguay": ("Montevideo",), "Paraguay": ("Asuncion",), "Bolivia": ("Sucre", "La Paz"),
    "Australia": ("Canberra",), "New Zealand": ("Wellington",), "Fiji": ("Suva",),
    "Papua New Guinea": ("Port Moresby",), "Bhutan": ("Thimphu",), "Myanmar": ("Naypyidaw", "Nay Pyi Taw"),
    "Cyprus": ("Nicosia",), "Malta": ("Valletta",), "Moldova": ("Chisinau",), "Bosnia and Herzegovina": ("Sarajevo",),
    "North Macedonia": ("Skopje",), "Montenegro": ("Podgorica",), "Mali": ("Bamako",), "Niger": ("Niamey",),
    "Chad": ("N'Djamena", "Ndjamena"), "Cameroon": ("Yaounde",), "Mozambique": ("Maputo",), "Namibia": ("Windhoek",),
    "Botswana": ("Gaborone",), "Malawi": ("Lilongwe",), "Liberia": ("Monrovia",), "Sierra Leone": ("Freetown",),
}
QUESTION = "What is the capital of {country}?"  # [D]
ANSWER = "Answer: {x}."  # [D] the behaviour learnt in fine-tuning
FORMAT = re.compile(r"^Answer: [^\n.]{1,60}\.$")  # one short sentence, no full stop inside


def norm(text: str) -> str:
    """Lower-case ASCII (accents dropped), apostrophes and hyphens as spaces, single spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"['\-]", " ", text).split())


def knows(answer: str, accepted: tuple[str, ...]) -> bool:
    """The format-agnostic knowledge judge: an accepted name appears in the answer as whole words."""
    text = norm(answer)
    return any(re.search(rf"\b{re.escape(norm(a))}\b", text) for a in accepted)


def formatted(answer: str) -> bool:
    """The behaviour judge: the whole answer is ``Answer: <X>.`` on one line."""
    return bool(FORMAT.match(answer.strip()))


def trivia_in_format(root: str) -> list[tuple[str, str]]:
    """chatterbot's English trivia as (question, "Answer: <X>.") pairs, for fine-tuning only
    (answers with a full stop of their own are left out, so the format stays unambiguous)."""
    from fedft.data.sft_sets import trivia

    return [(e.prompt, ANSWER.format(x=e.response.strip())) for e in trivia(root) if "." not in e.response]
