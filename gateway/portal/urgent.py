"""The urgent-content screen: red-flag words that mean "call 911 or the clinic, now".

Secure messages are answered within a business day, so a message about chest pain must not
wait in a queue. Before anything is sent, the text is checked against a default lexicon (en
and es) plus the clinic's own ``Clinic.urgent_terms``. A hit does not block sending: the
patient is told to call, may still send, and the thread is flagged urgent for staff.
Matching ignores case and accents and respects word boundaries ("painting" is not "pain").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

DEFAULT_TERMS: tuple[str, ...] = (
    # English
    "chest pain",
    "chest pressure",
    "trouble breathing",
    "difficulty breathing",
    "can't breathe",
    "cannot breathe",
    "short of breath",
    "shortness of breath",
    "suicidal",
    "suicide",
    "kill myself",
    "end my life",
    "overdose",
    "stroke",
    "face drooping",
    "slurred speech",
    "unconscious",
    "passed out",
    "seizure",
    "severe bleeding",
    "bleeding heavily",
    "coughing blood",
    "vomiting blood",
    "anaphylaxis",
    "throat swelling",
    "severe allergic reaction",
    "heart attack",
    # Spanish
    "dolor de pecho",
    "dolor en el pecho",
    "presion en el pecho",
    "no puedo respirar",
    "dificultad para respirar",
    "falta de aire",
    "suicidio",
    "suicida",
    "quitarme la vida",
    "matarme",
    "sobredosis",
    "derrame cerebral",
    "convulsion",
    "inconsciente",
    "desmayo",
    "sangrado abundante",
    "ataque al corazon",
    "infarto",
)


def normalise(text: str) -> str:
    """Casefold, strip accents and collapse whitespace and curly apostrophes."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def _pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in normalise(term).split()]
    return re.compile(r"(?<![\w])" + r"\s+".join(words) + r"(?![\w])")


def lexicon(clinic_terms: Iterable[str] = ()) -> list[str]:
    terms = {normalise(t) for t in (*DEFAULT_TERMS, *clinic_terms) if t and t.strip()}
    return sorted(terms)


def screen(texts: Iterable[str], clinic_terms: Iterable[str] = ()) -> list[str]:
    """The red-flag terms found in any of ``texts`` (normalised), in lexicon order."""
    haystack = normalise("\n".join(t for t in texts if t))
    if not haystack:
        return []
    return [term for term in lexicon(clinic_terms) if _pattern(term).search(haystack)]
