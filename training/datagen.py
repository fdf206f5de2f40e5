"""Seeded synthetic tool-calling conversations for the demo model.

Every conversation is built from the project's real tools: the schemas the model sees are the tools'
``openai_schema()`` (exactly what the agent renders at run time) and every tool result is the real tool's output
(``await tool.acall(arguments)``), file tools running against a generated temporary workspace.

Kinds (``KINDS``): direct answers with no tool, one call then an answer, two or three calls in sequence, parallel
calls, a tool error then a correction (or an apology), requests no tool can serve. Each conversation offers a varied
subset of the tools (the needed ones plus distractors) and mostly renders in thinking-off form.

Splits: ``train`` and ``heldout`` draw entities (cities, file names, words, people) from disjoint pools and numbers
from disjoint classes (a value belongs to the held-out class iff ``crc32(text) % 5 == 0``), so nothing the held-out
split names or computes appears in training. Example ``i`` of split ``s`` depends only on ``(seed, s, i)``.

    python -m training.datagen --split train --n 1000 --seed 1234 --out train.jsonl.gz
    python -m training.datagen --split heldout --n 200 --seed 1234 --out training/heldout.jsonl
    python -m training.datagen --split test --n 200 --out training/test.jsonl   # seed 20261201, deduplicated

The ``test`` split is the held-out split's distribution (pools, kinds, phrasings) from its own stream and seed
(``TEST_STREAM``, ``TEST_SEED``), minus candidates whose prompt occurs in heldout.jsonl or a training sample.

Each JSONL record: ``{"id", "kind", "tools": [names], "messages": [...], "enable_thinking", "workspace": {path:
text}, "time_seed" (of the seeded current_time stand-in), "expected": [[{"name", "arguments"}...] per assistant step...], "check": [substrings of the final answer]}``.
``render(record, schemas, template)`` gives the training text; ``assistant_spans`` the characters the loss covers.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import shutil
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

DATA_VERSION = "demo-data-v5"
# v5 changes no text: the vocabulary pieces of invented entities come from the v5 tokenizer (1024 tokens). The
# tokenizer itself is trained on a corpus without vocabulary pieces (PIECES_TOKENIZER = None: syllables instead),
# so neither depends on the other.
# The held-out split is generated exactly as in demo-data-v2 (same random stream, kinds and phrasings): v3 changes
# only the training distribution, so the held-out numbers of every checkpoint compare on the same cases and the
# built-in eval suite (fmoe/eval/suites/demo_heldout.yaml, made from heldout.jsonl) stays current.
HELDOUT_STREAM = "demo-data-v2"
DEFAULT_SEED = 1234
# The test split (issue 16): the held-out split's generator, pools and kind weights, but its own random stream and
# seed, so its conversations are new; used for nothing but the final report (the held-out split chose between runs).
# ``generate_test`` drops candidates whose prompt occurs in training/heldout.jsonl or in a training sample.
TEST_STREAM = "demo-test-v1"
TEST_SEED = 20261201
SPLITS = ("train", "heldout", "test")
from fmoe.demo import MODEL_DIR  # noqa: E402
from fmoe.tools.demo import TOOL_NAMES  # noqa: E402
FILE_TOOLS = ("list_files", "read_file", "write_file", "search_files")

TEMPLATE_PATH = MODEL_DIR / "chat_template.jinja"


# ---------------------------------------------------------------------------------------------------------------
# Tools: the real objects
# ---------------------------------------------------------------------------------------------------------------
def _demo_tools():
    """The demo tools module (get_weather's table is read and, for invented cities, extended here)."""
    from fmoe.tools import demo as demo_tools  # noqa: PLC0415

    return demo_tools


def all_tools(workspace: str | None = None) -> dict:
    return _demo_tools().demo_tools(workspace)


def tool_schemas() -> dict[str, dict]:
    """name -> openai_schema() of every tool the demo model learns."""
    return _demo_tools().tool_schemas()


class Executor:
    """Runs real tools for one conversation; file tools against a fresh temporary workspace."""

    def __init__(self, workspace_files: dict[str, str] | None = None, time_seed: int = 0):
        self.time_seed = time_seed
        # v4: invented cities this conversation's weather table also knows (training only; see Conv.cities)
        self.extra_weather: dict[str, tuple[float, str]] = {}
        self.dir = tempfile.mkdtemp(prefix="fmoe-demo-ws-")
        for rel, text in (workspace_files or {}).items():
            p = Path(self.dir, rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        self.tools = all_tools(self.dir)
        self._loop = asyncio.new_event_loop()

    def __call__(self, name: str, arguments: dict) -> tuple[str, bool]:
        if name == "current_time":  # the clock is not reproducible: a seeded fake in the real tool's format
            return fake_time(arguments.get("timezone", "UTC"), self.time_seed)
        with _cwd(self.dir), _weather_table(self.extra_weather if name == "get_weather" else {}):
            res = self._loop.run_until_complete(self.tools[name].acall(dict(arguments)))
        return res.content, res.is_error

    def close(self) -> None:
        self._loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _weather_table(extra: dict[str, tuple[float, str]]):
    """The real get_weather, its table extended by ``extra`` for the duration (same code path, same output)."""
    if not extra:
        yield
        return
    from unittest import mock  # noqa: PLC0415

    ex = _demo_tools()
    with mock.patch.dict(ex.WEATHER, extra), mock.patch.dict(ex._BY_KEY, {k.casefold(): k for k in extra}):
        yield


@contextlib.contextmanager
def _cwd(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def fake_time(tz: str, seed: int = 0) -> tuple[str, bool]:
    """A seeded instant in 2025 in the real current_time tool's format (and its error text for a bad zone)."""
    try:
        return _demo_tools().fake_time(tz, seed), False
    except ValueError as e:
        return f"ValueError: {e}", True


# ---------------------------------------------------------------------------------------------------------------
# Entity pools, split so that held-out entities and values never appear in training
# ---------------------------------------------------------------------------------------------------------------
def heldout_class(text: str) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 5 == 0


def _split_pool(items: Iterable[str], split: str) -> list[str]:
    items = sorted(set(items))
    return [x for x in items if heldout_class("pool:" + x) == (split == "heldout")]


WORDS = """alpha amber anchor apple arrow aspen atlas autumn badge bamboo banjo barley basil beacon birch bison blossom
border breeze bridge bronze cabin cactus camel candle canyon carbon cedar cherry cliff clover cobalt comet coral cotton
crane crystal daisy delta desert dolphin dragon dune eagle echo ember falcon fern fiddle flame forest fossil fox galaxy
garnet ginger glacier granite grape harbor harvest hazel helmet heron honey horizon iris island ivory jade jaguar
jasmine jungle kayak kernel kettle koala lagoon lantern lemon lily lotus lunar magnet mango maple marble meadow melon
meteor mint mirror mocha monsoon mosaic nectar nebula nickel nutmeg oasis ocean olive onyx orbit orchid otter oyster
panda papaya parrot pebble pepper petal phoenix pine planet plum polar poppy prism pumpkin quartz quill rabbit radar
raven reef ridge river robin rocket saffron salmon sapphire satin shadow shell sierra silver sketch sparrow spruce
squirrel summit sunset swan tango tiger timber topaz torch tulip tundra turtle valley velvet violet walnut willow
winter wolf yarrow zebra zephyr acorn badger beetle bramble cinder copper dahlia falcon flint gravel hollow juniper
lichen marsh nettle opal osprey pewter quail rowan sable thistle umber vesper wren""".split()

NAMES = """Alice Bruno Carla Dmitri Elena Farid Greta Hiro Ines Jonas Keiko Liam Mira Nadia Omar Priya Quentin Rosa
Sami Tara Ugo Vera Wanda Xavier Yara Zane Amir Bianca Chen Dara Emil Fiona Goran Hana Ivan Jana Kofi Lena Marco Nina
Oscar Paula Rafael Sofia Tomas Uma Viktor Wei Yusuf Zoe Aiden Beatriz Cyrus Daphne Ezra Freya Gideon Helga Idris Juno
Kai Lucia Mateo Noor Olga Pablo Rhea Stefan Thea Ulla Vito Willa Yosef Zara""".split()

UNKNOWN_CITIES = """Atlantis Springfield Gotham Metropolis Eldorado Narnia Shangri-La Avalon Camelot Lilliput
Wakanda Zanzibar-on-Sea Riverdale Hogsmeade Mordor Utopia Xanadu Emerald-City Arcadia Brigadoon Lemuria Elbonia
Freedonia Genovia Latveria Qumar Sokovia Zubrowka Agrabah Arendelle""".split()

TIMEZONES = """UTC Europe/Paris Europe/London Europe/Berlin Europe/Madrid Europe/Rome Europe/Oslo Europe/Vienna
Europe/Lisbon Europe/Athens Asia/Tokyo Asia/Seoul Asia/Dubai Asia/Kolkata Asia/Singapore Asia/Bangkok
Asia/Shanghai Asia/Jakarta America/New_York America/Chicago America/Denver America/Los_Angeles America/Toronto
America/Sao_Paulo America/Mexico_City Africa/Cairo Africa/Nairobi Africa/Lagos Australia/Sydney
Australia/Perth Pacific/Auckland Europe/Warsaw Europe/Prague Europe/Dublin Asia/Manila""".split()

MORE_TIMEZONES = """Africa/Abidjan Africa/Accra Africa/Addis_Ababa Africa/Algiers Africa/Asmara Africa/Asmera Africa/Bamako
Africa/Bangui Africa/Banjul Africa/Bissau Africa/Blantyre Africa/Brazzaville Africa/Bujumbura Africa/Cairo
Africa/Casablanca Africa/Ceuta Africa/Conakry Africa/Dakar Africa/Dar_es_Salaam Africa/Djibouti Africa/Douala
Africa/El_Aaiun Africa/Freetown Africa/Gaborone Africa/Harare Africa/Johannesburg Africa/Juba Africa/Kampala
Africa/Khartoum Africa/Kigali Africa/Kinshasa Africa/Lagos Africa/Libreville Africa/Lome Africa/Luanda
Africa/Lubumbashi Africa/Lusaka Africa/Malabo Africa/Maputo Africa/Maseru Africa/Mbabane Africa/Mogadishu
Africa/Monrovia Africa/Nairobi Africa/Ndjamena Africa/Niamey Africa/Nouakchott Africa/Ouagadougou Africa/Porto-Novo
Africa/Sao_Tome Africa/Timbuktu Africa/Tripoli Africa/Tunis Africa/Windhoek America/Adak America/Anchorage
America/Anguilla America/Antigua America/Araguaina America/Aruba America/Asuncion America/Atikokan America/Atka
America/Bahia America/Bahia_Banderas America/Barbados America/Belem America/Belize America/Blanc-Sablon
America/Boa_Vista America/Bogota America/Boise America/Buenos_Aires America/Cambridge_Bay America/Campo_Grande
America/Cancun America/Caracas America/Catamarca America/Cayenne America/Cayman America/Chicago America/Chihuahua
America/Ciudad_Juarez America/Coral_Harbour America/Cordoba America/Costa_Rica America/Coyhaique America/Creston
America/Cuiaba America/Curacao America/Danmarkshavn America/Dawson America/Dawson_Creek America/Denver
America/Detroit America/Dominica America/Edmonton America/Eirunepe America/El_Salvador America/Ensenada
America/Fort_Nelson America/Fort_Wayne America/Fortaleza America/Glace_Bay America/Godthab America/Goose_Bay
America/Grand_Turk America/Grenada America/Guadeloupe America/Guatemala America/Guayaquil America/Guyana
America/Halifax America/Havana America/Hermosillo America/Indianapolis America/Inuvik America/Iqaluit
America/Jamaica America/Jujuy America/Juneau America/Knox_IN America/Kralendijk America/La_Paz America/Lima
America/Los_Angeles America/Louisville America/Lower_Princes America/Maceio America/Managua America/Manaus
America/Marigot America/Martinique America/Matamoros America/Mazatlan America/Mendoza America/Menominee
America/Merida America/Metlakatla America/Mexico_City America/Miquelon America/Moncton America/Monterrey
America/Montevideo America/Montreal America/Montserrat America/Nassau America/New_York America/Nipigon America/Nome
America/Noronha America/Nuuk America/Ojinaga America/Panama America/Pangnirtung America/Paramaribo America/Phoenix
America/Port-au-Prince America/Port_of_Spain America/Porto_Acre America/Porto_Velho America/Puerto_Rico
America/Punta_Arenas America/Rainy_River America/Rankin_Inlet America/Recife America/Regina America/Resolute
America/Rio_Branco America/Rosario America/Santa_Isabel America/Santarem America/Santiago America/Santo_Domingo
America/Sao_Paulo America/Scoresbysund America/Shiprock America/Sitka America/St_Barthelemy America/St_Johns
America/St_Kitts America/St_Lucia America/St_Thomas America/St_Vincent America/Swift_Current America/Tegucigalpa
America/Thule America/Thunder_Bay America/Tijuana America/Toronto America/Tortola America/Vancouver America/Virgin
America/Whitehorse America/Winnipeg America/Yakutat America/Yellowknife Asia/Aden Asia/Almaty Asia/Amman Asia/Anadyr
Asia/Aqtau Asia/Aqtobe Asia/Ashgabat Asia/Ashkhabad Asia/Atyrau Asia/Baghdad Asia/Bahrain Asia/Baku Asia/Bangkok
Asia/Barnaul Asia/Beirut Asia/Bishkek Asia/Brunei Asia/Calcutta Asia/Chita Asia/Choibalsan Asia/Chongqing
Asia/Chungking Asia/Colombo Asia/Dacca Asia/Damascus Asia/Dhaka Asia/Dili Asia/Dubai Asia/Dushanbe Asia/Famagusta
Asia/Gaza Asia/Harbin Asia/Hebron Asia/Ho_Chi_Minh Asia/Hong_Kong Asia/Hovd Asia/Irkutsk Asia/Istanbul Asia/Jakarta
Asia/Jayapura Asia/Jerusalem Asia/Kabul Asia/Kamchatka Asia/Karachi Asia/Kashgar Asia/Kathmandu Asia/Katmandu
Asia/Khandyga Asia/Kolkata Asia/Krasnoyarsk Asia/Kuala_Lumpur Asia/Kuching Asia/Kuwait Asia/Macao Asia/Macau
Asia/Magadan Asia/Makassar Asia/Manila Asia/Muscat Asia/Nicosia Asia/Novokuznetsk Asia/Novosibirsk Asia/Omsk
Asia/Oral Asia/Phnom_Penh Asia/Pontianak Asia/Pyongyang Asia/Qatar Asia/Qostanay Asia/Qyzylorda Asia/Rangoon
Asia/Riyadh Asia/Saigon Asia/Sakhalin Asia/Samarkand Asia/Seoul Asia/Shanghai Asia/Singapore Asia/Srednekolymsk
Asia/Taipei Asia/Tashkent Asia/Tbilisi Asia/Tehran Asia/Tel_Aviv Asia/Thimbu Asia/Thimphu Asia/Tokyo Asia/Tomsk
Asia/Ujung_Pandang Asia/Ulaanbaatar Asia/Ulan_Bator Asia/Urumqi Asia/Ust-Nera Asia/Vientiane Asia/Vladivostok
Asia/Yakutsk Asia/Yangon Asia/Yekaterinburg Asia/Yerevan Atlantic/Azores Atlantic/Bermuda Atlantic/Canary
Atlantic/Cape_Verde Atlantic/Faeroe Atlantic/Faroe Atlantic/Jan_Mayen Atlantic/Madeira Atlantic/Reykjavik
Atlantic/South_Georgia Atlantic/St_Helena Atlantic/Stanley Australia/ACT Australia/Adelaide Australia/Brisbane
Australia/Broken_Hill Australia/Canberra Australia/Currie Australia/Darwin Australia/Eucla Australia/Hobart
Australia/LHI Australia/Lindeman Australia/Lord_Howe Australia/Melbourne Australia/NSW Australia/North
Australia/Perth Australia/Queensland Australia/South Australia/Sydney Australia/Tasmania Australia/Victoria
Australia/West Australia/Yancowinna Europe/Amsterdam Europe/Andorra Europe/Astrakhan Europe/Athens Europe/Belfast
Europe/Belgrade Europe/Berlin Europe/Bratislava Europe/Brussels Europe/Bucharest Europe/Budapest Europe/Busingen
Europe/Chisinau Europe/Copenhagen Europe/Dublin Europe/Gibraltar Europe/Guernsey Europe/Helsinki Europe/Isle_of_Man
Europe/Istanbul Europe/Jersey Europe/Kaliningrad Europe/Kiev Europe/Kirov Europe/Kyiv Europe/Lisbon Europe/Ljubljana
Europe/London Europe/Luxembourg Europe/Madrid Europe/Malta Europe/Mariehamn Europe/Minsk Europe/Monaco Europe/Moscow
Europe/Nicosia Europe/Oslo Europe/Paris Europe/Podgorica Europe/Prague Europe/Riga Europe/Rome Europe/Samara
Europe/San_Marino Europe/Sarajevo Europe/Saratov Europe/Simferopol Europe/Skopje Europe/Sofia Europe/Stockholm
Europe/Tallinn Europe/Tirane Europe/Tiraspol Europe/Ulyanovsk Europe/Uzhgorod Europe/Vaduz Europe/Vatican
Europe/Vienna Europe/Vilnius Europe/Volgograd Europe/Warsaw Europe/Zagreb Europe/Zaporozhye Europe/Zurich
Indian/Antananarivo Indian/Chagos Indian/Christmas Indian/Cocos Indian/Comoro Indian/Kerguelen Indian/Mahe
Indian/Maldives Indian/Mauritius Indian/Mayotte Indian/Reunion Pacific/Apia Pacific/Auckland Pacific/Bougainville
Pacific/Chatham Pacific/Chuuk Pacific/Easter Pacific/Efate Pacific/Enderbury Pacific/Fakaofo Pacific/Fiji
Pacific/Funafuti Pacific/Galapagos Pacific/Gambier Pacific/Guadalcanal Pacific/Guam Pacific/Honolulu
Pacific/Johnston Pacific/Kanton Pacific/Kiritimati Pacific/Kosrae Pacific/Kwajalein Pacific/Majuro Pacific/Marquesas
Pacific/Midway Pacific/Nauru Pacific/Niue Pacific/Norfolk Pacific/Noumea Pacific/Pago_Pago Pacific/Palau
Pacific/Pitcairn Pacific/Pohnpei Pacific/Ponape Pacific/Port_Moresby Pacific/Rarotonga Pacific/Saipan Pacific/Samoa
Pacific/Tahiti Pacific/Tarawa Pacific/Tongatapu Pacific/Truk Pacific/Wake Pacific/Wallis Pacific/Yap""".split()

DIRS = ["notes", "docs", "data", "reports", "src", "logs", "config", "drafts", "archive", "misc"]
EXTS = [".txt", ".md", ".log", ".csv"]

ITEMS = """bread milk eggs coffee rice apples batteries stamps candles soap pasta tea butter flour onions tape glue
paint nails paper""".split()
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

NO_TOOL_REQUESTS = [
    ("Book a flight to {city} for next week.", "book flights"),
    ("Can you send an email to {name} saying I'll be late?", "send emails"),
    ("Order a pizza for me.", "order food"),
    ("Play some jazz music.", "play music"),
    ("Turn off the lights in the living room.", "control lights"),
    ("Call {name} on the phone.", "make phone calls"),
    ("Buy two tickets for the concert in {city}.", "buy tickets"),
    ("Post a message on social media about my trip to {city}.", "post on social media"),
    ("Set an alarm for 7 am tomorrow.", "set alarms"),
    ("Translate this letter into Japanese and mail it to {name}.", "send mail"),
    ("Reserve a table for four at a restaurant in {city}.", "make reservations"),
    ("Transfer 50 dollars to {name}.", "transfer money"),
    ("Take a photo of my desk.", "take photos"),
    ("Schedule a meeting with {name} in my calendar.", "edit calendars"),
    ("Print the document on the office printer.", "print documents"),
    ("Order a taxi to the airport.", "order taxis"),
]


@lru_cache(maxsize=None)
def pools(split: str) -> dict[str, list[str]]:
    return {
        "word": _split_pool(WORDS, split),
        "name": _split_pool(NAMES, split),
        "city": _split_pool(_demo_tools().WEATHER, split),
        "unknown_city": _split_pool(UNKNOWN_CITIES, split),
        # training also draws from every other zone, so zone names are copied rather than recalled
        "tz": _split_pool(TIMEZONES, split) + ([z for z in MORE_TIMEZONES if z not in
                                                set(TIMEZONES)] if split == "train" else []),
        "item": _split_pool(ITEMS, split),
    }


ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
          "cl", "dr", "gr", "kr", "pl", "sh", "st", "th", "tr", "qu", ""]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "y"]
CODAS = ["n", "r", "l", "s", "t", "m", "x", "nd", "rk", "st"]


@lru_cache(maxsize=1)
def _heldout_words() -> frozenset:
    return frozenset(x for pool in pools("heldout").values() for x in pool for x in (x, x.lower()))


@lru_cache(maxsize=1)
def _heldout_entities() -> tuple[frozenset, tuple]:
    """Lower-cased held-out entities of every pool, and their parts (time zones split at '/')."""
    ents = set()
    for pool in pools("heldout").values():
        for x in pool:
            ents.add(x.lower())
            ents.update(y.lower() for y in x.replace("_", "/").split("/") if y)
    return frozenset(ents), tuple(sorted(e for e in ents if len(e) >= 4))


def _touches_heldout(w: str) -> bool:
    """True if ``w`` is a held-out entity or contains one (of 4+ letters): invented training strings avoid them."""
    exact, long_ = _heldout_entities()
    lw = w.lower()
    return lw in exact or any(e in lw for e in long_)


VOCAB_ENTITY_P = 0.4  # share of training words, names and unknown cities built from vocabulary pieces (v3)
# the tokenizer folder whose letter pieces invented entities are built from; FMOE_DEMO_TOKENIZER overrides it (to
# generate data for a candidate tokenizer), None means no pieces at all (syllables: the tokenizer's own corpus)
PIECES_TOKENIZER: str | None = os.environ.get("FMOE_DEMO_TOKENIZER") or str(TEMPLATE_PATH.parent)


@lru_cache(maxsize=4)
def vocab_pieces(path: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Letter pieces of a tokenizer's BPE vocabulary (default: PIECES_TOKENIZER): (word starts, continuations).

    A token counts if its text (byte-level decoded) is letters, optionally after one leading space, quote, slash,
    dot, underscore or dash (Qwen's pre-tokenizer glues one such character to the letters that follow). Starts are
    the pieces that begin a word (that leading character, or none); continuations are all letter pieces. With the
    v5 pre-tokenizer (words split from what precedes them) no piece has a leading character: every piece starts."""
    p = Path(path or PIECES_TOKENIZER)
    from_path = p / "tokenizer.json" if p.is_dir() else p
    vocab = json.loads(from_path.read_text(encoding="utf-8"))["model"]["vocab"]
    from fmoe.structured.qwen_vocab import bytes_to_unicode
    dec = {c: b for b, c in bytes_to_unicode().items()}
    starts, conts = set(), set()
    for t in vocab:
        try:
            text = bytes(dec[ch] for ch in t).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        core = text[1:] if text[:1] in " \"/._-" else text
        if core and core.isascii() and core.isalpha():
            conts.add(core)
            if core != text:
                starts.add(core)
    if len(starts) < len(conts) // 20:  # words are split from their leading character: any piece can start one
        starts = set(conts)
    return tuple(sorted(starts)), tuple(sorted(conts))


class _HeldoutWords:
    def __contains__(self, w):
        return w in _heldout_words()


HELDOUT_WORDS = _HeldoutWords()
INVENTED_CITY_P = 0.5   # v4: share of training weather cities that are invented (and known to that record's table)
WEATHER_CONDITIONS = ["sunny", "cloudy", "rain", "snow", "fog", "windy", "clear", "drizzle", "partly cloudy",
                      "thunderstorms", "humid"]


INVENTED = {
    "word": lambda g: g.syllables(1, 3).lower(),
    "name": lambda g: g.syllables(1, 3).capitalize(),
    "unknown_city": lambda g: " ".join(g.syllables(1, 3).capitalize() for _ in range(g.r.choice([1, 1, 1, 2]))),
}


class Gen:
    """Per-example random source with split-aware value pickers."""

    def __init__(self, seed: int, split: str, index: int):
        stream = {"heldout": HELDOUT_STREAM, "test": TEST_STREAM}.get(split, DATA_VERSION)
        self.r = random.Random(f"{stream}/{seed}/{split}/{index}")
        self.split = "heldout" if split == "test" else split  # the test split draws as the held-out split does
        self.p = pools(self.split)

    def ok(self, text: str) -> bool:
        return heldout_class(text) == (self.split == "heldout")

    def choice(self, seq):
        return self.r.choice(seq)

    def pick(self, pool: str, k: int = 1):
        """k distinct entities of a pool. In training, words, names and unknown cities are often invented
        (random syllables), so the model learns to copy any string rather than recall a closed set."""
        if self.split == "train" and pool in INVENTED:
            xs: list[str] = []
            while len(xs) < k:
                u = self.r.random()
                x = (self.vocab_entity(pool) if u < VOCAB_ENTITY_P and PIECES_TOKENIZER
                     else INVENTED[pool](self) if u < 0.7 else self.r.choice(self.p[pool]))
                if x not in xs:
                    xs.append(x)
        else:
            xs = self.r.sample(self.p[pool], k)
        return xs if k > 1 else xs[0]

    def vocab_entity(self, pool: str) -> str:
        """An invented string joined from 1-3 random letter pieces of the tokenizer's vocabulary (v3), so every
        piece occurs in training as something to copy. Names and cities are capitalised; never a held-out entity."""
        starts, conts = vocab_pieces()
        while True:
            n = self.r.choice([1, 2, 2, 3])
            parts = [self.r.choice(starts)] + [self.r.choice(conts) for _ in range(n - 1)]
            w = "".join(parts)
            if pool == "word":
                w = w.lower() if self.r.random() < 0.7 else w
            else:
                w = w[0].upper() + w[1:]
                if pool == "unknown_city" and self.r.random() < 0.2:
                    w += " " + self.r.choice(starts).capitalize()
            if 2 <= len(w) <= 24 and not _touches_heldout(w):
                return w

    def syllables(self, lo: int, hi: int) -> str:
        while True:
            w = "".join(self.r.choice(ONSETS) + self.r.choice(VOWELS) + (self.r.choice(CODAS) if self.r.random() < 0.3
                                                                         else "") for _ in range(self.r.randint(lo, hi)))
            if w.lower() not in HELDOUT_WORDS and w.capitalize() not in HELDOUT_WORDS:
                return w

    def int_(self, lo: int, hi: int) -> int:
        while True:
            v = self.r.randint(lo, hi)
            if self.ok(str(v)):
                return v

    def num(self, lo: float = 1, hi: float = 1000, decimals_p: float = 0.4) -> int | float:
        """An int or a short decimal (its str() is what the user writes and what the argument holds)."""
        while True:
            if self.r.random() < decimals_p:
                v = round(self.r.uniform(lo, hi), self.r.choice([1, 1, 2]))
                if v == int(v):
                    continue
            else:
                v = self.r.randint(int(lo), int(hi))
            if self.ok(str(v)):
                return v

    def number_for_operand(self) -> int | float:
        return self.num(*self.r.choice([(2, 20), (2, 99), (10, 999), (100, 9999), (1000, 99999)]),
                        decimals_p=0.25)


# ---------------------------------------------------------------------------------------------------------------
# Phrasing helpers
# ---------------------------------------------------------------------------------------------------------------
SYSTEM_PROMPTS = [None, None, None, "You are a helpful assistant.", "You are a helpful agent.",
                  "You are a helpful assistant. Use the tools when they help.",
                  "You are fmoe, a local assistant that can call tools.",
                  "Answer briefly. Use tools for calculations, files, time and weather."]


def _cap(g: Gen, s: str) -> str:
    """Light surface variation of a user request."""
    r = g.r.random()
    if r < 0.08:
        s = s.rstrip("?.!")
    elif r < 0.14:
        s = s[0].lower() + s[1:]
    if g.r.random() < 0.12:
        s = g.choice(["Please, ", "Hey, ", "Quick question: ", "Hi! "]) + s[0].lower() + s[1:]
    return s


def _fmt(v: Any) -> str:
    return str(v)


def _jload(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def _call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


# ---------------------------------------------------------------------------------------------------------------
# Conversation builder
# ---------------------------------------------------------------------------------------------------------------
class Conv:
    def __init__(self, g: Gen, ex: Executor):
        self.g, self.ex = g, ex
        self.messages: list[dict] = []
        self.expected: list[list[dict]] = []
        self.results: list[list[tuple[str, bool]]] = []

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def calls(self, calls: list[dict], preface: str = "") -> list[tuple[str, bool]]:
        self.messages.append({"role": "assistant", "content": preface, "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
        out = []
        for c in calls:
            content, is_err = self.ex(c["name"], c["arguments"])
            self.messages.append({"role": "tool", "name": c["name"], "content": content})
            out.append((content, is_err))
        self.expected.append(calls)
        self.results.append(out)
        return out

    def answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def cities(self, k: int = 1):
        """k cities the weather tool knows. v4, training only: with probability INVENTED_CITY_P each is invented
        (vocabulary pieces or syllables) and added to this conversation's weather table, so that a successful
        get_weather call has to copy the city from the request instead of recalling the ~30 training cities."""
        g = self.g
        if g.split != "train":
            return g.pick("city", k)
        xs = g.pick("city", k) if k > 1 else [g.pick("city")]
        for i in range(len(xs)):
            if g.r.random() < INVENTED_CITY_P:
                while True:
                    x = (g.vocab_entity("city") if g.r.random() < 0.6 and PIECES_TOKENIZER
                         else INVENTED["unknown_city"](g))
                    if x not in xs and x.casefold() not in _demo_tools()._BY_KEY:  # the tool's own lookup keys
                        break
                xs[i] = x
                # g.int_: a training-class number (held-out number classes never appear in training)
                self.ex.extra_weather[x] = (float(g.int_(-8, 36)), g.choice(WEATHER_CONDITIONS))
        return xs if k > 1 else xs[0]

    def preface(self) -> str:
        if self.g.r.random() < 0.15:
            return self.g.choice(["Let me check.", "I'll look that up.", "Let me use a tool for that.",
                                  "One moment.", "Sure."])
        return ""


class Skip(Exception):
    """The sampled values gave an unusable result (e.g. a tool error where none was planned): resample."""


def _need_ok(res: tuple[str, bool]) -> str:
    content, is_err = res
    if is_err:
        raise Skip(content)
    return content


# --- individual task families: each adds user + assistant turns to c and returns (needed tools, check list) ----
def t_calculator(c: Conv):
    g = c.g
    a, b = g.number_for_operand(), g.number_for_operand()
    op = g.choice(["+", "-", "*", "/"])
    if op == "/" and b == 0:
        raise Skip("div0")
    words = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"], "/": ["divided by"]}
    form = g.r.random()
    if form < 0.45:
        sp = g.choice([" ", " ", ""])
        expr = f"{a}{sp}{op}{sp}{b}"
        req = g.choice(["What is {e}?", "Calculate {e}.", "Compute {e}", "Can you work out {e}?",
                        "{e} = ?", "Evaluate {e} for me.", "What's {e}?"]).format(e=expr)
    elif form < 0.8:
        expr = f"{a} {op} {b}"
        req = g.choice(["What is {a} {w} {b}?", "How much is {a} {w} {b}?", "Calculate {a} {w} {b}.",
                        "What do you get with {a} {w} {b}?"]).format(a=a, b=b, w=g.choice(words[op]))
    else:
        cc = g.number_for_operand()
        op2 = g.choice(["+", "-", "*"])
        expr = f"({a} {op} {b}) {op2} {cc}" if g.r.random() < 0.5 else f"{a} {op} {b} {op2} {cc}"
        req = g.choice(["What is {e}?", "Calculate {e}", "Please evaluate {e}.", "Compute {e} please."]
                       ).format(e=expr)
    c.user(_cap(g, req))
    res = _need_ok(c.calls([_call("calculator", expression=expr)], c.preface())[0])
    c.answer(g.choice(["The result is {r}.", "{e} = {r}.", "The answer is {r}.", "It comes to {r}."]
                      ).format(r=res, e=expr))
    return ["calculator"], [res]


def _weather_text(d: dict) -> str:
    u = "°C" if d["unit"] == "celsius" else "°F"
    return f"{d['temperature']}{u}"


def t_weather(c: Conv):
    g = c.g
    if g.r.random() < 0.3:
        return t_error_city(c)
    city = c.cities()
    unit = g.choice([None, None, "celsius", "fahrenheit", "fahrenheit"])
    if unit is None:
        req = g.choice(["What's the weather in {c}?", "How is the weather in {c} right now?",
                        "Is it warm in {c} today?", "Weather for {c}, please.", "What is the temperature in {c}?",
                        "Tell me the current weather in {c}."]).format(c=city)
        args = {"city": city}
    else:
        req = g.choice(["What's the weather in {c} in {u}?", "Give me the temperature in {c} in {u}.",
                        "How hot is it in {c}? Use {u}.", "Weather in {c} ({u}) please."]).format(c=city, u=unit)
        args = {"city": city, "unit": unit}
    c.user(_cap(g, req))
    d = json.loads(_need_ok(c.calls([_call("get_weather", **args)], c.preface())[0]))
    t = _weather_text(d)
    c.answer(g.choice(["It is {t} in {c} ({w}).", "In {c} it is currently {t}, {w}.",
                       "The weather in {c}: {w}, {t}."]).format(t=t, w=d["condition"], c=d["city"]))
    return ["get_weather"], [str(d["temperature"]), d["condition"]]


UNIT_PAIRS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("cm", "in"), ("in", "cm"), ("km", "m"),
              ("m", "cm"), ("kg", "lb"), ("lb", "kg"), ("g", "oz"), ("oz", "g"), ("kg", "g"), ("c", "f"),
              ("f", "c"), ("c", "k"), ("k", "c"), ("mi", "ft"), ("lb", "oz"), ("ft", "in")]
UNIT_WORDS = {"km": ["km", "kilometers"], "mi": ["mi", "miles"], "m": ["m", "meters"], "ft": ["ft", "feet"],
              "cm": ["cm", "centimeters"], "in": ["in", "inches"], "kg": ["kg", "kilograms"],
              "lb": ["lb", "pounds"], "g": ["g", "grams"], "oz": ["oz", "ounces"], "c": ["celsius"],
              "f": ["fahrenheit"], "k": ["kelvin"]}


def _conversion(g: Gen) -> tuple[int | float, str, str]:
    src, dst = g.choice(UNIT_PAIRS)
    value = g.num(1, 500, decimals_p=0.4) if src not in ("c", "f", "k") else g.num(1, 120, decimals_p=0.3)
    return value, g.choice(UNIT_WORDS[src]), g.choice(UNIT_WORDS[dst])


def t_convert(c: Conv):
    g = c.g
    v, fu, tu = _conversion(g)
    req = g.choice(["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?", "What is {v} {f} in {t}?",
                    "{v} {f} to {t}, please.", "Please convert {v} {f} into {t}."]).format(v=v, f=fu, t=tu)
    c.user(_cap(g, req))
    d = json.loads(_need_ok(c.calls([_call("convert_units", value=v, from_unit=fu, to_unit=tu)], c.preface())[0]))
    c.answer(g.choice(["{v} {f} is {r} {t}.", "That is {r} {t}.", "{v} {f} = {r} {t}."]
                      ).format(v=v, f=fu, r=d["result"], t=tu))
    return ["convert_units"], [str(d["result"])]


def t_time(c: Conv):
    g = c.g
    tz = g.pick("tz")
    if tz == "UTC" and g.r.random() < 0.5:
        req = g.choice(["What time is it?", "What's the current time?", "Tell me the time."])
        args = {}
    else:
        req = g.choice(["What time is it in {z}?", "Current time in the {z} timezone?",
                        "Tell me the time for timezone {z}.", "What's the date and time in {z}?"]).format(z=tz)
        args = {"timezone": tz}
    c.user(_cap(g, req))
    res = _need_ok(c.calls([_call("current_time", **args)], c.preface())[0])
    c.answer(g.choice(["The current time is {r}.", "It is {r}.", "Right now it is {r}."]).format(r=res))
    return ["current_time"], [res]


# --- workspace -------------------------------------------------------------------------------------------------
def make_workspace(g: Gen) -> dict[str, str]:
    """3-6 small files in 1-3 folders, each with one distinctive fact."""
    files: dict[str, str] = {}
    dirs = g.r.sample(DIRS, g.r.randint(1, 3))
    stems = g.pick("word", 8)
    n = g.r.randint(3, 6)
    for i in range(n):
        d = g.choice(dirs + [""]) if i else dirs[0]
        path = (d + "/" if d else "") + stems[i] + g.choice(EXTS)
        files[path] = _fact(g, stems[i])
    return files


def _fact(g: Gen, stem: str) -> str:
    k = g.r.randint(0, 5)
    if k == 0:
        return f"Meeting with {g.pick('name')} on {g.choice(DAYS)} at {g.int_(8, 18)}:{g.choice(['00', '15', '30', '45'])}."
    if k == 1:
        return f"The budget for {stem} is {g.int_(100, 99999)} dollars."
    if k == 2:
        return f"Remember to buy {g.pick('item')} and {g.pick('item')}."
    if k == 3:
        return f"Server {stem} runs on port {g.int_(1024, 65000)}."
    if k == 4:
        return f"Project {stem} is owned by {g.pick('name')}."
    return f"The code word is {g.pick('word')}."


def _new_stem(g: Gen, ws: dict) -> str:
    while True:
        w = g.pick("word")
        if not any(w in p for p in ws):
            return w


def _numbers_file(g: Gen) -> tuple[str, list]:
    vals = [g.num(1, 500, decimals_p=0.3) for _ in range(g.r.randint(2, 4))]
    return "\n".join(str(v) for v in vals) + "\n", vals


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def t_read(c: Conv, ws: dict):
    g = c.g
    path = g.choice(sorted(ws))
    req = g.choice(["What does {p} say?", "Read {p} for me.", "Show me the contents of {p}.",
                    "Open the file {p} and tell me what it contains.", "What is in {p}?"]).format(p=path)
    c.user(_cap(g, req))
    text = _need_ok(c.calls([_call("read_file", path=path)], c.preface())[0])
    line = _first_line(text)
    c.answer(g.choice(["{p} says: {t}", "The file {p} contains: {t}", "Here is {p}: {t}"]).format(p=path, t=line))
    return ["read_file"], [line]


def _listed(content: str, ws: dict, folder: str) -> list[str]:
    """Entries of ``folder`` that the list_files result shows (names as the workspace has them)."""
    prefix = "" if folder in (".", "") else folder.rstrip("/") + "/"
    names = set()
    for p in ws:
        if p.startswith(prefix):
            rest = p[len(prefix):]
            names.add(rest.split("/")[0] + ("/" if "/" in rest else ""))
    return sorted(n for n in names if n.rstrip("/") in content)


def t_list(c: Conv, ws: dict):
    g = c.g
    folders = sorted({p.split("/")[0] for p in ws if "/" in p})
    if folders and g.r.random() < 0.7:
        folder = g.choice(folders)
        req = g.choice(["What files are in the {d} folder?", "List the files in {d}.", "Show me what's in {d}/.",
                        "Which files does the {d} directory contain?"]).format(d=folder)
        args = {"path": folder}
    else:
        folder = "."
        req = g.choice(["What files are in the workspace?", "List the files here.", "Show me the files.",
                        "What's in the current directory?"])
        args = {} if g.r.random() < 0.6 else {"path": "."}
    c.user(_cap(g, req))
    content = _need_ok(c.calls([_call("list_files", **args)], c.preface())[0])
    names = _listed(content, ws, folder)
    if not names:
        raise Skip("empty listing")
    where = "the workspace" if folder == "." else folder
    c.answer(g.choice(["{w} contains: {n}.", "Files in {w}: {n}.", "I found these in {w}: {n}."]
                      ).format(w=where, n=", ".join(names)))
    return ["list_files"], [n.rstrip("/") for n in names]


def _search_word(g: Gen, ws: dict) -> tuple[str, str] | None:
    """A word that occurs in exactly one file (and not in any file name), with that file."""
    cands = []
    for p, text in ws.items():
        for w in text.replace(".", " ").split():
            if len(w) >= 4 and w.isalpha() and sum(w in t for t in ws.values()) == 1 and \
                    not any(w.lower() in q.lower() for q in ws) and w not in ("with", "budget", "dollars",
                                                                                "Remember", "Meeting", "Server",
                                                                                "runs", "port", "Project", "owned",
                                                                                "code", "word", "buy", "The"):
                cands.append((w, p))
    return g.choice(sorted(cands)) if cands else None


def t_search(c: Conv, ws: dict):
    g = c.g
    found = _search_word(g, ws)
    if not found:
        raise Skip("no unique word")
    word, path = found
    req = g.choice(["Which file mentions {w}?", "Search the files for {w}.", "Find where {w} is mentioned.",
                    "Is {w} mentioned in any file?"]).format(w=word)
    c.user(_cap(g, req))
    content = _need_ok(c.calls([_call("search_files", pattern=word)], c.preface())[0])
    if path not in content:
        raise Skip("search miss")
    c.answer(g.choice(["{w} is mentioned in {p}.", "I found {w} in {p}.", "The file {p} mentions {w}."]
                      ).format(w=word, p=path))
    return ["search_files"], [path]


def t_write(c: Conv, ws: dict):
    g = c.g
    folder = g.choice(["", ""] + sorted({p.split("/")[0] for p in ws if "/" in p}))
    stem = _new_stem(g, ws)
    path = (folder + "/" if folder else "") + stem + g.choice([".txt", ".md"])
    content = _fact(g, stem)
    req = g.choice(["Create a file {p} containing: {t}", "Write '{t}' to {p}.",
                    "Save this note in {p}: {t}", "Make a new file called {p} with the text: {t}"]
                   ).format(p=path, t=content)
    c.user(_cap(g, req) if not req.startswith("Write '") else req)
    _need_ok(c.calls([_call("write_file", path=path, content=content)], c.preface())[0])
    c.answer(g.choice(["Done: I wrote the note to {p}.", "I saved the text to {p}.", "{p} has been created."]
                      ).format(p=path))
    return ["write_file"], [path]


# --- sequences, parallel, errors, no-tool, direct --------------------------------------------------------------
def t_search_then_read(c: Conv, ws: dict):
    g = c.g
    found = _search_word(g, ws)
    if not found:
        raise Skip("no unique word")
    word, path = found
    req = g.choice(["Find the file that mentions {w} and tell me what it says.",
                    "Which file talks about {w}? Read it to me.",
                    "Search for {w} and show me the whole file."]).format(w=word)
    c.user(_cap(g, req))
    content = _need_ok(c.calls([_call("search_files", pattern=word)])[0])
    if path not in content:
        raise Skip("search miss")
    text = _need_ok(c.calls([_call("read_file", path=path)])[0])
    line = _first_line(text)
    c.answer(g.choice(["{p} mentions {w}. It says: {t}", "The file is {p}. It says: {t}"]
                      ).format(p=path, w=word, t=line))
    return ["search_files", "read_file"], [path, line]


def t_sum_file(c: Conv, ws: dict):
    g = c.g
    folder = g.choice(["data", "reports", "data", "misc"])
    stem = _new_stem(g, ws)
    path = f"{folder}/{stem}.txt"
    text, vals = _numbers_file(g)
    ws[path] = text
    c.ex_write(path, text)
    three = g.r.random() < 0.35
    if three:
        req = g.choice(["There is one file in {d} that I care about: list {d}, read the file and add up its numbers.",
                        "Look in the {d} folder, read the file with numbers and tell me their total."]
                       ).format(d=folder)
    else:
        req = g.choice(["Read {p} and add up the numbers in it.", "What is the sum of the numbers in {p}?",
                        "Add up all the values in {p}."]).format(p=path)
    c.user(_cap(g, req))
    tools = ["read_file", "calculator"]
    if three:
        listing = _need_ok(c.calls([_call("list_files", path=folder)])[0])
        if stem not in listing:
            raise Skip("listing miss")
        # only a folder holding just this file makes the request unambiguous
        if sum(1 for p in ws if p.startswith(folder + "/")) != 1:
            raise Skip("ambiguous folder")
        tools = ["list_files"] + tools
    content = _need_ok(c.calls([_call("read_file", path=path)])[0])
    nums = [x for x in content.split()]
    expr = " + ".join(nums)
    total = _need_ok(c.calls([_call("calculator", expression=expr)])[0])
    c.answer(g.choice(["The numbers in {p} add up to {r}.", "The total is {r}.", "Sum of {p}: {r}."]
                      ).format(p=path, r=total))
    return tools, [total]


def t_weather_diff(c: Conv):
    g = c.g
    a, b = c.cities(2)
    req = g.choice(["How much warmer is it in {a} than in {b}?", "What is the temperature difference between {a} and {b}?",
                    "Compare the temperatures of {a} and {b}: how many degrees apart are they?"]).format(a=a, b=b)
    c.user(_cap(g, req))
    ra, rb = c.calls([_call("get_weather", city=a), _call("get_weather", city=b)])
    da, db = json.loads(_need_ok(ra)), json.loads(_need_ok(rb))
    expr = f"{da['temperature']} - {db['temperature']}"
    diff = _need_ok(c.calls([_call("calculator", expression=expr)])[0])
    c.answer(f"It is {da['temperature']}°C in {a} and {db['temperature']}°C in {b}, a difference of {diff} degrees.")
    return ["get_weather", "calculator"], [diff]


def t_weather_convert(c: Conv):
    g = c.g
    city = c.cities()
    req = g.choice(["What's the temperature in {c} in kelvin?", "Give me the temperature of {c} in kelvin."]
                   ).format(c=city)
    c.user(_cap(g, req))
    d = json.loads(_need_ok(c.calls([_call("get_weather", city=city)])[0]))
    k = json.loads(_need_ok(c.calls([_call("convert_units", value=d["temperature"], from_unit="celsius",
                                           to_unit="kelvin")])[0]))
    c.answer(f"It is {d['temperature']}°C in {city}, which is {k['result']} kelvin.")
    return ["get_weather", "convert_units"], [str(k["result"])]


def t_parallel(c: Conv, ws: dict):
    g = c.g
    k = g.r.randint(0, 3)
    if k == 0:
        cities = c.cities(g.choice([2, 2, 3]))
        req = g.choice(["What's the weather in {l}?", "Tell me the weather in {l}.", "How is the weather in {l}?"]
                       ).format(l=_and(cities))
        c.user(_cap(g, req))
        rs = c.calls([_call("get_weather", city=x) for x in cities], c.preface())
        ds = [json.loads(_need_ok(r)) for r in rs]
        c.answer(" ".join(f"{d['city']}: {_weather_text(d)}, {d['condition']}." for d in ds))
        return ["get_weather"], [str(d["temperature"]) for d in ds]
    if k == 1:
        exprs = []
        for _ in range(g.choice([2, 2, 3])):
            exprs.append(f"{g.number_for_operand()} {g.choice(['+', '-', '*'])} {g.number_for_operand()}")
        req = g.choice(["Calculate {l}.", "What are {l}?", "Compute these: {l}."]).format(l=_and(exprs))
        c.user(_cap(g, req))
        rs = [_need_ok(r) for r in c.calls([_call("calculator", expression=e) for e in exprs], c.preface())]
        c.answer(" ".join(f"{e} = {r}." for e, r in zip(exprs, rs)))
        return ["calculator"], rs
    if k == 2:
        convs = [_conversion(g) for _ in range(2)]
        req = "Convert {a} and {b}.".format(a=f"{convs[0][0]} {convs[0][1]} to {convs[0][2]}",
                                            b=f"{convs[1][0]} {convs[1][1]} to {convs[1][2]}")
        c.user(_cap(g, req))
        rs = c.calls([_call("convert_units", value=v, from_unit=f, to_unit=t) for v, f, t in convs], c.preface())
        ds = [json.loads(_need_ok(r)) for r in rs]
        c.answer(" ".join(f"{v} {f} is {d['result']} {t}." for (v, f, t), d in zip(convs, ds)))
        return ["convert_units"], [str(d["result"]) for d in ds]
    paths = g.r.sample(sorted(ws), 2)
    req = g.choice(["Read {a} and {b}.", "Show me {a} and {b}.", "What do {a} and {b} say?"]).format(a=paths[0],
                                                                                                 b=paths[1])
    c.user(_cap(g, req))
    rs = [_first_line(_need_ok(r)) for r in c.calls([_call("read_file", path=p) for p in paths], c.preface())]
    c.answer(" ".join(f"{p} says: {t}" for p, t in zip(paths, rs)))
    return ["read_file"], rs


def _and(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def t_error_city(c: Conv):
    g = c.g
    city = g.pick("unknown_city")
    c.user(_cap(g, g.choice(["What's the weather in {c}?", "How warm is it in {c}?",
                             "Tell me the weather for {c}."]).format(c=city)))
    content, is_err = c.calls([_call("get_weather", city=city)])[0]
    if not is_err:
        raise Skip("known city")
    c.answer(g.choice(["Sorry, I don't have weather data for {c}.", "Sorry, {c} is not a city I can get the weather for."]
                      ).format(c=city))
    return ["get_weather"], ["Sorry", city]


def t_error_path(c: Conv, ws: dict):
    """Asks for a file by the wrong extension: read fails, list the folder, read the real file."""
    g = c.g
    path = g.choice(sorted(p for p in ws))
    folder, _, name = path.rpartition("/")
    stem, ext = os.path.splitext(name)
    wrong_ext = g.choice([e for e in EXTS if e != ext])
    wrong = (folder + "/" if folder else "") + stem + wrong_ext
    if wrong in ws:
        raise Skip("exists")
    c.user(_cap(g, g.choice(["Read {p}.", "What does {p} say?", "Show me {p}."]).format(p=wrong)))
    content, is_err = c.calls([_call("read_file", path=wrong)])[0]
    if not is_err:
        raise Skip("no error")
    listing = _need_ok(c.calls([_call("list_files", **({"path": folder} if folder else {}))])[0])
    if name not in listing:
        raise Skip("listing miss")
    text = _need_ok(c.calls([_call("read_file", path=path)],
                            g.choice(["There is no {w}, but there is {p}.", "{w} does not exist; {p} does."]
                                     ).format(w=wrong, p=path))[0])
    line = _first_line(text)
    c.answer(f"{wrong} does not exist, but {path} does. It says: {line}")
    return ["read_file", "list_files"], [line]


def t_error_div0(c: Conv):
    g = c.g
    a = g.number_for_operand()
    expr = f"{a} / 0"
    c.user(_cap(g, g.choice(["What is {e}?", "Calculate {e}.", "What is {a} divided by 0?"]).format(e=expr, a=a)))
    content, is_err = c.calls([_call("calculator", expression=expr)])[0]
    if not is_err:
        raise Skip("no error")
    c.answer("That cannot be computed: division by zero is undefined.")
    return ["calculator"], ["zero"]


def t_no_tool(c: Conv):
    g = c.g
    tmpl, what = g.choice(NO_TOOL_REQUESTS)
    c.user(_cap(g, tmpl.format(city=g.pick("city"), name=g.pick("name"))))
    c.answer(g.choice(["Sorry, I can't {w}: none of my tools can do that.",
                       "Sorry, I am not able to {w} with the tools I have."]).format(w=what))
    return [], ["Sorry"]


MISSING_TOOL_REQUESTS = {
    "get_weather": ("What's the weather in {city}?", "check the weather"),
    "calculator": ("Calculate {a} * {b}.", "do calculations"),
    "read_file": ("Read {path}.", "read files"),
    "current_time": ("What time is it in {tz}?", "tell the time"),
    "convert_units": ("Convert {a} km to miles.", "convert units"),
}


# v3 (training only): the missing-tool request is phrased by the same family that makes the positive case (the
# tool offered -> a call), so a phrasing never predicts the apology by itself: only the offered tools decide.
MISSING_TOOL_WHAT = {"get_weather": "check the weather", "calculator": "do calculations", "read_file": "read files",
                     "current_time": "tell the time", "convert_units": "convert units", "list_files": "list files",
                     "search_files": "search files", "write_file": "write files"}


def _contrast_request(c: Conv, missing: str, ws: dict) -> str:
    """The user request the positive family for ``missing`` would make (its turns are built, then dropped)."""
    sub = Conv(c.g, c.ex)
    sub.ex_write = c.ex_write
    fam = {"get_weather": lambda: t_weather(sub), "calculator": lambda: t_calculator(sub),
           "read_file": lambda: t_read(sub, ws), "current_time": lambda: t_time(sub),
           "convert_units": lambda: t_convert(sub), "list_files": lambda: t_list(sub, ws),
           "search_files": lambda: t_search(sub, ws), "write_file": lambda: t_write(sub, ws)}[missing]
    fam()
    return sub.messages[0]["content"]


def t_missing_tool(c: Conv, missing: str, ws: dict | None = None):
    g = c.g
    if g.split == "train":
        c.user(_contrast_request(c, missing, dict(ws or {})))
        what = MISSING_TOOL_WHAT[missing]
    else:
        tmpl, what = MISSING_TOOL_REQUESTS[missing]
        c.user(_cap(g, tmpl.format(city=g.pick("city"), a=g.number_for_operand(), b=g.number_for_operand(),
                                   path=g.pick("word") + ".txt", tz=g.pick("tz"))))
    c.answer(f"Sorry, I don't have a tool to {what} here.")
    return [], ["Sorry"]


def t_direct(c: Conv, offered: list[str]):
    g = c.g
    k = g.r.randint(0, 3)
    if k == 0:
        c.user(g.choice(["Hello!", "Hi", "Hey there", "Good morning!", "Hello, who are you?"]))
        c.answer(g.choice(["Hello! How can I help you today?", "Hi! How can I help you?"]))
        return [], ["help"]
    if k == 1:
        c.user(g.choice(["Thanks!", "Thank you very much.", "Great, thanks.", "Thanks for the help!"]))
        c.answer(g.choice(["You're welcome!", "Glad I could help!"]))
        return [], ["!"]
    if k == 2:
        c.user(g.choice(["What can you do?", "Which tools do you have?", "What are your capabilities?"]))
        if offered:
            c.answer("I can use these tools: " + ", ".join(offered) + ".")
            return [], list(offered)
        c.answer("I can answer simple questions, but I have no tools available right now.")
        return [], ["no tools"]
    w = g.pick("word")
    c.user(g.choice(["Reply with just the word {w}.", "Say {w}.", "Repeat after me: {w}"]).format(w=w))
    c.answer(w)
    return [], [w]


KINDS = ("direct", "single", "sequence", "parallel", "error", "no_tool")
KIND_WEIGHTS = (0.07, 0.38, 0.2, 0.13, 0.1, 0.12)          # held-out split (as in v2)
TRAIN_KIND_WEIGHTS = (0.06, 0.36, 0.17, 0.11, 0.14, 0.16)   # v3 training: more unknown-city errors and missing tools
TRAIN_MISSING_P = 0.6                                         # of training no_tool: the needed tool is not offered


def _executor_write(ex: Executor):
    def write(rel: str, text: str) -> None:
        p = Path(ex.dir, rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return write


def make_example(seed: int, split: str, index: int) -> dict:
    """Example ``index`` of ``split``: a pure function of (seed, split, index)."""
    for attempt in range(50):
        try:
            return _make_example(seed, split, index, attempt)
        except Skip:
            continue
    raise RuntimeError(f"could not build example {split}/{index}")


def _make_example(seed: int, split: str, index: int, attempt: int) -> dict:
    g = Gen(seed, split, index * 1000 + attempt)
    train = g.split == "train"
    kind = g.r.choices(KINDS, TRAIN_KIND_WEIGHTS if train else KIND_WEIGHTS)[0]
    ws = make_workspace(g)
    time_seed = g.r.randint(0, 10**9)
    with Executor(ws, time_seed=time_seed) as ex:
        c = Conv(g, ex)
        c.ex_write = _executor_write(ex)
        history: list[dict] = []
        if g.r.random() < 0.1 and kind != "direct":  # an earlier, finished exchange
            sub = Conv(g, ex)
            sub.ex_write = c.ex_write
            needed0, _ = g.choice([t_calculator, t_weather, t_convert])(sub)
            history = sub.messages
        else:
            needed0 = []
        c.messages = []
        offered_extra: list[str] = []
        if kind == "direct":
            offered = _sample_tools(g, [])
            needed, check = t_direct(c, offered)
        elif kind == "single":
            fn = g.r.choices(["calc", "weather", "convert", "time", "read", "list", "search", "write"],
                             [0.22, 0.18, 0.16, 0.08, 0.12, 0.08, 0.1, 0.06])[0]
            needed, check = {"calc": lambda: t_calculator(c), "weather": lambda: t_weather(c),
                             "convert": lambda: t_convert(c), "time": lambda: t_time(c),
                             "read": lambda: t_read(c, ws), "list": lambda: t_list(c, ws),
                             "search": lambda: t_search(c, ws), "write": lambda: t_write(c, ws)}[fn]()
        elif kind == "sequence":
            fn = g.choice(["search_read", "sum_file", "sum_file", "weather_diff", "weather_convert"])
            needed, check = {"search_read": lambda: t_search_then_read(c, ws), "sum_file": lambda: t_sum_file(c, ws),
                             "weather_diff": lambda: t_weather_diff(c),
                             "weather_convert": lambda: t_weather_convert(c)}[fn]()
        elif kind == "parallel":
            needed, check = t_parallel(c, ws)
        elif kind == "error":
            fn = g.choice(["city", "path", "path", "div0"])
            needed, check = {"city": lambda: t_error_city(c), "path": lambda: t_error_path(c, ws),
                             "div0": lambda: t_error_div0(c)}[fn]()
        else:
            if g.r.random() < (TRAIN_MISSING_P if train else 0.35):
                missing = g.choice(sorted(MISSING_TOOL_WHAT if train else MISSING_TOOL_REQUESTS))
                if missing in needed0:  # the earlier exchange used that tool: it cannot be missing now
                    raise Skip
                needed, check = t_missing_tool(c, missing, ws)
                offered_extra = ["!" + missing]
            else:
                needed, check = t_no_tool(c)
        if kind != "direct":
            offered = _sample_tools(g, sorted(set(needed) | set(needed0)), offered_extra)
    system = g.choice(SYSTEM_PROMPTS)
    messages = ([{"role": "system", "content": system}] if system else []) + history + c.messages
    thinking = g.r.random() < 0.08
    if thinking:
        _add_reasoning(g, messages, kind)
    return {"id": f"{split}-{index}", "kind": kind, "tools": offered, "messages": messages,
            "enable_thinking": thinking, "workspace": ws, "time_seed": time_seed, "expected": c.expected,
            "check": check}


def _sample_tools(g: Gen, needed: list[str], extra: list[str] | None = None) -> list[str]:
    banned = {e[1:] for e in (extra or []) if e.startswith("!")}
    others = [t for t in TOOL_NAMES if t not in needed and t not in banned]
    k = g.r.choices([0, 1, 2, 3, 4, 5, 6], [0.14, 0.2, 0.2, 0.16, 0.12, 0.1, 0.08])[0]
    chosen = set(needed) | set(g.r.sample(others, min(k, len(others))))
    if not chosen and g.r.random() < 0.5:
        return []
    tools = [t for t in TOOL_NAMES if t in chosen]
    g.r.shuffle(tools)
    return tools


def _add_reasoning(g: Gen, messages: list[dict], kind: str) -> None:
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    for m in messages[last_user + 1:]:
        if m["role"] != "assistant":
            continue
        if m.get("tool_calls"):
            names = ", ".join(dict.fromkeys(tc["function"]["name"] for tc in m["tool_calls"]))
            m["reasoning_content"] = f"The user's request needs a tool. I will call {names}."
        else:
            m["reasoning_content"] = "I have what I need to answer." if kind not in ("direct", "no_tool") else \
                "No tool is needed for this."


# ---------------------------------------------------------------------------------------------------------------
# Rendering (jinja2, as transformers' apply_chat_template does) and loss spans
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _compiled(template: str):
    from jinja2.ext import loopcontrols  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    def raise_exception(message):
        raise ValueError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def load_template(path: Path | str = TEMPLATE_PATH) -> str:
    return Path(path).read_text(encoding="utf-8")


def render(record: dict, schemas: dict[str, dict], template: str, add_generation_prompt: bool = False,
           messages: list[dict] | None = None) -> str:
    tools = [schemas[n] for n in record["tools"]] or None
    return _compiled(template).render(messages=messages if messages is not None else record["messages"],
                                      tools=tools, add_generation_prompt=add_generation_prompt,
                                      enable_thinking=record.get("enable_thinking", False))


AST_HEAD = "<|im_start|>assistant\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans the loss covers: each assistant turn's generated part, its <|im_end|> included."""
    spans = []
    pos = 0
    while True:
        i = text.find(AST_HEAD, pos)
        if i < 0:
            return spans
        s = i + len(AST_HEAD)
        if text.startswith(EMPTY_THINK, s):
            s += len(EMPTY_THINK)       # in the prompt at run time (thinking off)
        elif text.startswith("<think>\n", s):
            s += len("<think>\n")       # the generation prompt's part (thinking on)
        e = text.find("<|im_end|>", s)
        e = len(text) if e < 0 else e + len("<|im_end|>")
        spans.append((s, e))
        pos = e


# ---------------------------------------------------------------------------------------------------------------
# Bulk generation
# ---------------------------------------------------------------------------------------------------------------
def generate(seed: int, split: str, n: int, start: int = 0) -> list[dict]:
    return [make_example(seed, split, i) for i in range(start, start + n)]


def _gen_chunk(args):
    seed, split, start, n = args
    return generate(seed, split, n, start)


def generate_parallel(seed: int, split: str, n: int, workers: int | None = None, chunk: int = 500,
                      start: int = 0) -> list[dict]:
    import multiprocessing as mp  # noqa: PLC0415

    jobs = [(seed, split, start + s, min(chunk, n - s)) for s in range(0, n, chunk)]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) == 1:
        return [r for j in jobs for r in _gen_chunk(j)]
    with mp.get_context("fork").Pool(workers) as pool:
        return [r for part in pool.map(_gen_chunk, jobs) for r in part]


def prompt_key(r: dict) -> str:
    """A record's prompt: its messages up to and including the last user turn (what an eval case is given)."""
    msgs = r["messages"]
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    return json.dumps(msgs[:last_user + 1], sort_keys=True, ensure_ascii=False)


def user_key(r: dict) -> str:
    """The text of a record's last user turn alone (a looser duplicate check than ``prompt_key``)."""
    return [m for m in r["messages"] if m["role"] == "user"][-1]["content"]


def conversation_key(r: dict) -> str:
    return json.dumps(r["messages"], sort_keys=True, ensure_ascii=False)


def heldout_suite_records() -> list[dict]:
    """The cases of the built-in suite ``demo-heldout`` as records (messages = prompt + reference). The suite file
    was written from an earlier heldout.jsonl (commit 7369002) and never regenerated, so the engine evals chose runs
    on these cases while the training runs' held-out losses used training/heldout.jsonl: the test split avoids both."""
    import yaml  # noqa: PLC0415

    from fmoe.eval.suite import BUILTIN  # noqa: PLC0415

    data = yaml.safe_load(Path(BUILTIN["demo-heldout"]).read_text(encoding="utf-8"))
    return [{"id": c["id"], "kind": c.get("kind"), "messages": list(c["messages"]) + list(c.get("reference") or [])}
            for c in data["cases"]]


def generate_test(n: int = 200, seed: int = TEST_SEED, heldout: list[dict] | None = None,
                  train: list[dict] | None = None, heldout_suite: list[dict] | None = None, batch: int = 50,
                  workers: int | None = 1) -> tuple[list[dict], dict]:
    """The test split: the first ``n`` examples of split ``test`` (indices 0, 1, ...) whose prompt (``prompt_key``)
    occurs neither in ``heldout`` (default: training/heldout.jsonl), nor in ``heldout_suite`` (default: the cases of
    the built-in suite demo-heldout), nor in ``train`` (a training sample), nor earlier in the test split. Returns
    the records (ids keep their generator index) and the duplicate counts."""
    from training import HELDOUT_PATH  # noqa: PLC0415

    heldout = read_jsonl(HELDOUT_PATH) if heldout is None else heldout
    heldout_suite = heldout_suite_records() if heldout_suite is None else heldout_suite
    train = train or []
    keys = {name: ({prompt_key(r) for r in recs}, {user_key(r) for r in recs}, {conversation_key(r) for r in recs})
            for name, recs in (("heldout", heldout), ("heldout_suite", heldout_suite), ("train", train))}
    stats = {"seed": seed, "stream": TEST_STREAM, "candidates": 0, "kept": 0, "train_sample": len(train),
             "heldout": len(heldout), "heldout_suite": len(heldout_suite), "dropped_kinds": {}}
    for name in keys:
        stats.update({f"prompt_in_{name}": 0, f"user_text_in_{name}": 0, f"conversation_in_{name}": 0})
    stats["prompt_repeated_in_test"] = 0
    seen: set[str] = set()
    out: list[dict] = []
    start = 0
    while len(out) < n:
        cands = generate_parallel(seed, "test", batch, workers, chunk=-(-batch // max(1, workers or 1)),
                                  start=start)
        start += batch
        for r in cands:
            if len(out) >= n:
                break
            stats["candidates"] += 1
            pk, uk, ck = prompt_key(r), user_key(r), conversation_key(r)
            drop = False
            for name, (pks, uks, cks) in keys.items():
                stats[f"user_text_in_{name}"] += uk in uks
                stats[f"conversation_in_{name}"] += ck in cks
                if pk in pks:
                    stats[f"prompt_in_{name}"] += 1
                    drop = True
            if pk in seen:
                stats["prompt_repeated_in_test"] += 1
                drop = True
            seen.add(pk)
            if drop:
                stats["dropped_kinds"][r["kind"]] = stats["dropped_kinds"].get(r["kind"], 0) + 1
            else:
                out.append(r)
    stats["kept"] = len(out)
    stats["kinds"] = {k: sum(r["kind"] == k for r in out) for k in KINDS}
    return out, stats


def write_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help=f"default {DEFAULT_SEED}; {TEST_SEED} for --split test")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--schemas-out", default=None, help="also write the tool schemas used (JSON)")
    ap.add_argument("--train-seeds", default=f"{DEFAULT_SEED}",
                    help="--split test: training seeds whose first --train-sample records the test prompts must avoid")
    ap.add_argument("--train-sample", type=int, default=2000, help="--split test: training records per seed")
    ap.add_argument("--stats-out", default=None, help="--split test: write the duplicate counts (JSON)")
    a = ap.parse_args(argv)
    if a.seed is None:
        a.seed = TEST_SEED if a.split == "test" else DEFAULT_SEED
    extra: dict = {}
    if a.split == "test":
        train = [r for s in a.train_seeds.split(",") if s.strip()
                 for r in generate_parallel(int(s), "train", a.train_sample, a.workers)]
        recs, extra = generate_test(a.n, a.seed, train=train, workers=a.workers or os.cpu_count() or 1)
        extra["train_seeds"] = [int(s) for s in a.train_seeds.split(",") if s.strip()]
        if a.stats_out:
            Path(a.stats_out).write_text(json.dumps(extra, indent=1) + "\n", encoding="utf-8")
    else:
        recs = generate_parallel(a.seed, a.split, a.n, a.workers)
    write_jsonl(recs, a.out)
    if a.schemas_out:
        Path(a.schemas_out).write_text(json.dumps(tool_schemas(), indent=1, ensure_ascii=False), encoding="utf-8")
    kinds: dict[str, int] = {}
    for r in recs:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(json.dumps({"n": len(recs), "split": a.split, "seed": a.seed, "data_version": DATA_VERSION,
                      "kinds": kinds, **({"dedup": extra} if extra else {})}))


if __name__ == "__main__":
    main()
