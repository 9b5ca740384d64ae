"""The English word lists and the small sentence grammar of the synthetic demo corpus.

`generate_sentences(n, rng)` draws lower-case sentences of 4-12 words (no digits, no
punctuation) from a dozen templates such as "the old farmer carried a heavy box to the market"
or "anna bought twenty seven red apples yesterday". Word classes are kept apart (people and
animals act, things and food are acted upon, motion verbs take a destination) so sentences
stay plausible. `vocabulary()` lists every word form the grammar can produce (> 1000).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable


def _words(text: str) -> list[str]:
    return text.split()


NAMES = _words("""anna james maria john linda robert susan michael karen david sarah thomas emma
daniel laura peter helen paul alice mark grace george rachel oliver sophie henry lucy jack
chloe samuel hannah adam julia simon kate victor clara martin nina oscar ruby frank irene
leo rosa hugo diana felix olivia ben amy carl ella dennis fiona edward jane harry molly ivan
nora kevin paula lewis tina max wendy owen vera ryan zoe tony holly steven megan albert
bella colin daisy eric flora gordon heidi isaac joan keith lily""")

PEOPLE = _words("""teacher doctor farmer baker driver nurse pilot sailor soldier artist singer
dancer writer painter student child boy girl man woman friend neighbour brother sister
mother father uncle aunt cousin king queen prince princess guard chef waiter farmer
hunter fisherman builder gardener player captain judge lawyer engineer scientist
banker tailor grandmother grandfather baby stranger visitor""")

ANIMALS = _words("""dog cat horse cow sheep goat pig duck chicken rabbit mouse bird eagle owl
parrot fox wolf bear lion tiger monkey elephant camel donkey deer frog snake turtle whale
dolphin shark fish bee spider squirrel goose swan pony puppy kitten zebra giraffe""")

THINGS = _words("""book table chair door window box bag basket bottle cup plate bowl spoon fork
knife glass lamp clock watch phone letter card ticket map key coin ring hat coat shirt
shoe sock glove scarf jacket dress blanket pillow bed sofa desk pencil pen paper picture
mirror camera radio guitar piano drum ball kite toy doll wheel bicycle car truck bus boat
ship train plane rope ladder bucket hammer brush candle flag umbrella tent wallet
newspaper magazine envelope stamp parcel gift jar pot pan kettle towel soap comb wagon
carpet curtain fence gate roof wall floor stone rock shell feather flower tree leaf branch
seed plant bench button needle thread ribbon bell whistle helmet sword shield barrel
crown anchor engine sail""")

FOOD = _words("""apple orange banana lemon cherry grape pear peach plum melon potato tomato
carrot onion cabbage pepper bean pea egg sandwich cake pie cookie biscuit muffin pancake
sausage carrot pizza cheese bread butter honey soup salad noodle biscuit candy""")

PLACES = _words("""kitchen garden park market station library school church hospital office
bakery farm forest river lake beach island village city harbour bridge castle museum
theatre shop hotel restaurant cafe garage barn field hill mountain valley desert cave
street road corner square airport stadium playground classroom bedroom bathroom cellar
attic hallway palace prison factory zoo camp shore meadow pond""")

ADJECTIVES = _words("""old young big small tall short long heavy light warm cold hot cool dry wet
clean dirty new quiet loud happy sad angry tired hungry thirsty brave kind gentle polite
rude clever silly busy lazy lucky proud shy calm careful famous friendly funny honest
nervous patient strong weak rich poor bright dark pale red blue green yellow white black
brown pink purple orange grey golden silver wooden broken empty full fresh ripe sweet sour
bitter salty soft hard smooth rough sharp round square flat thick thin wide narrow deep
shallow fast slow early late pretty ugly beautiful lovely strange simple plain fancy cheap
expensive small tiny huge giant little noisy sleepy curious wild tame fierce gentle
healthy sick clumsy graceful elegant modern ancient dusty muddy sandy rusty shiny sticky
fluffy furry crisp frozen spicy delicious tasty dull strict cheerful grumpy jolly""")

DEGREE = _words("very quite rather really too so")

# (base, past) of verbs taking a thing or food as object.
TRANSITIVE = _words("""see:saw take:took make:made find:found bring:brought buy:bought sell:sold
carry:carried hold:held open:opened close:closed paint:painted clean:cleaned wash:washed
cut:cut drop:dropped lift:lifted push:pushed pull:pulled throw:threw
catch:caught fix:fixed break:broke build:built draw:drew fold:folded hide:hid keep:kept
lose:lost move:moved pack:packed pick:picked place:placed send:sent share:shared show:showed
steal:stole touch:touched watch:watched want:wanted need:needed like:liked love:loved
hate:hated borrow:borrowed lend:lent give:gave leave:left forget:forgot remember:remembered
order:ordered count:counted check:checked fill:filled empty:emptied weigh:weighed
measure:measured choose:chose drag:dragged kick:kicked roll:rolled shake:shook grab:grabbed
polish:polished repair:repaired wrap:wrapped deliver:delivered collect:collected
examine:examined notice:noticed admire:admired dry:dried mend:mended sew:sewed sort:sorted
stack:stacked hang:hung bury:buried discover:discovered guard:guarded""")

# (base, past) of verbs whose object is food.
FOOD_VERBS = _words("""eat:ate cook:cooked bake:baked boil:boiled fry:fried peel:peeled
slice:sliced taste:tasted smell:smelled chop:chopped serve:served share:shared buy:bought
sell:sold order:ordered bring:brought carry:carried want:wanted like:liked""")

# (base, past) of motion verbs followed by a destination ("walked to the park").
MOTION = _words("""walk:walked run:ran drive:drove swim:swam fly:flew travel:travelled hurry:hurried
go:went come:came rush:rushed march:marched wander:wandered sail:sailed climb:climbed
crawl:crawled jump:jumped race:raced ride:rode stroll:strolled return:returned
move:moved skip:skipped dash:dashed""")

# (base, past) of verbs that need no object ("the baby laughed loudly").
INTRANSITIVE = _words("""sleep:slept laugh:laughed cry:cried smile:smiled sing:sang dance:danced
wait:waited cough:coughed sneeze:sneezed shout:shouted whisper:whispered listen:listened
rest:rested work:worked play:played read:read write:wrote speak:spoke think:thought
study:studied yawn:yawned sit:sat stand:stood kneel:knelt pray:prayed
dream:dreamed snore:snored shiver:shivered wave:waved nod:nodded""")

ADVERBS = _words("""quickly slowly quietly loudly carefully happily sadly gently suddenly
finally again together alone early late often never always sometimes soon now calmly
proudly nervously politely angrily bravely eagerly easily badly well safely softly
patiently quickly silently warmly kindly firmly""")

TIMES = """yesterday today tomorrow tonight|last night|this morning|this afternoon|this evening
|every morning|every evening|every day|every week|last week|next week|last year|next year
|on monday|on tuesday|on wednesday|on thursday|on friday|on saturday|on sunday|in january
|in february|in march|in april|in may|in june|in july|in august|in september|in october
|in november|in december|at noon|at midnight|after lunch|before dinner|after school
|in the spring|in the summer|in the autumn|in the winter""".replace("\n", "")

PLACE_PREPS = _words("in near behind beside outside inside at above below under")
MOTION_PREPS = _words("to into across through around toward past from")
SUBJECT_PRONOUNS = _words("i you he she we they")
POSSESSIVES = _words("my your his her our their")
MODALS = _words("will can could should must might would")
ONES = _words("one two three four five six seven eight nine")
TEENS = _words("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen")
TENS = _words("twenty thirty forty fifty sixty seventy eighty ninety")

_IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "goose": "geese",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "knife": "knives", "leaf": "leaves",
    "wolf": "wolves", "shelf": "shelves", "potato": "potatoes", "tomato": "tomatoes",
    "fisherman": "fishermen", "foot": "feet", "tooth": "teeth", "person": "people",
}  # fmt: skip


def _pairs(words: list[str]) -> list[tuple[str, str]]:
    return [tuple(w.split(":")) for w in words]  # type: ignore[misc]


def _unique(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


def plural(noun: str) -> str:
    """English plural: "box" -> "boxes", "baby" -> "babies", "child" -> "children"."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    """Present tense after he/she/it: "catch" -> "catches", "carry" -> "carries"."""
    if verb == "have":
        return "has"
    if verb.endswith(("s", "x", "z", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def number_words(n: int) -> str:
    """Spell 2 <= n <= 99 in words: 47 -> "forty seven"."""
    if not 1 <= n <= 99:
        raise ValueError(f"number_words supports 1..99, got {n}")
    if n < 10:
        return ONES[n - 1]
    if n < 20:
        return TEENS[n - 10]
    tens, ones = divmod(n, 10)
    return TENS[tens - 2] + ("" if ones == 0 else " " + ONES[ones - 1])


_ACTORS = _unique(PEOPLE + ANIMALS)
_COUNTABLE = _unique(ANIMALS + THINGS + FOOD)
_ADJS = _unique(ADJECTIVES)
_TRANS = _pairs(_unique(TRANSITIVE))
_FOOD_VERBS = _pairs(_unique(FOOD_VERBS))
_MOTION = _pairs(_unique(MOTION))
_INTRANS = _pairs(_unique(INTRANSITIVE))
_TIMES = [t.strip() for t in TIMES.split("|")]
_HABIT_TIMES = [t for t in _TIMES if t.startswith("every")] + [
    "on mondays", "on fridays", "at weekends",
]  # fmt: skip


def _article(word: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "the"
    return "an" if word[0] in "aeio" else "a"


def _noun_phrase(nouns: list[str], rng: random.Random, adj_prob: float = 0.5) -> str:
    noun = rng.choice(nouns)
    head = f"{rng.choice(_ADJS)} {noun}" if rng.random() < adj_prob else noun
    return f"{_article(head, rng)} {head}"


def _counted(nouns: list[str], rng: random.Random) -> str:
    count = number_words(rng.randint(2, 99))
    adj = rng.choice(_ADJS) + " " if rng.random() < 0.5 else ""
    return f"{count} {adj}{plural(rng.choice(nouns))}"


def _action(rng: random.Random) -> tuple[str, str, str]:
    """(base, past, object phrase): food verbs take food, the others things."""
    if rng.random() < 0.25:
        (base, past), nouns = rng.choice(_FOOD_VERBS), FOOD
    else:
        (base, past), nouns = rng.choice(_TRANS), THINGS
    obj = _noun_phrase(nouns, rng) if rng.random() < 0.75 else _counted(nouns, rng)
    return base, past, obj


def _subject(rng: random.Random) -> str:
    return rng.choice(NAMES) if rng.random() < 0.4 else _noun_phrase(_ACTORS, rng)


def _maybe(text: str, rng: random.Random, prob: float = 0.4) -> str:
    return text if rng.random() < prob else ""


def _place(rng: random.Random) -> str:
    return f"{rng.choice(PLACE_PREPS)} the {rng.choice(PLACES)}"


def _did_something(rng: random.Random) -> str:
    _, past, obj = _action(rng)
    return f"{_subject(rng)} {past} {obj} {_maybe(_place(rng), rng)} {_maybe(_time(rng), rng)}"


def _time(rng: random.Random) -> str:
    return rng.choice(_TIMES)


def _went(rng: random.Random) -> str:
    _, past = rng.choice(_MOTION)
    who = f"{rng.choice(NAMES)} and {rng.choice(NAMES)}" if rng.random() < 0.3 else _subject(rng)
    where = f"{rng.choice(MOTION_PREPS)} the {rng.choice(PLACES)}"
    how = _maybe(rng.choice(ADVERBS), rng, 0.3)
    return f"{who} {past} {where} {how} {_maybe(_time(rng), rng)}"


def _rested(rng: random.Random) -> str:
    _, past = rng.choice(_INTRANS)
    return f"{_subject(rng)} {past} {rng.choice(ADVERBS)} {_maybe(_place(rng), rng, 0.5)}"


def _will_go(rng: random.Random) -> str:
    who = rng.choice(SUBJECT_PRONOUNS + NAMES)
    if rng.random() < 0.4:
        base, _ = rng.choice(_INTRANS)
        return f"{who} {rng.choice(MODALS)} {base} {rng.choice(ADVERBS)} {_maybe(_place(rng), rng)}"
    base, _ = rng.choice(_MOTION)
    where = f"{rng.choice(MOTION_PREPS)} the {rng.choice(PLACES)}"
    return f"{who} {rng.choice(MODALS)} {base} {where} {_maybe(_time(rng), rng)}"


def _usually(rng: random.Random) -> str:
    base, _ = rng.choice(_INTRANS + _MOTION)
    return f"{_subject(rng)} {third_person(base)} {rng.choice(ADVERBS)} {rng.choice(_HABIT_TIMES)}"


def _will_do(rng: random.Random) -> str:
    base, _, obj = _action(rng)
    who = rng.choice(SUBJECT_PRONOUNS + NAMES)
    return f"{who} {rng.choice(MODALS)} {base} {obj} {_maybe(_time(rng), rng)}"


def _habit(rng: random.Random) -> str:
    base, _, obj = _action(rng)
    return f"{_subject(rng)} {third_person(base)} {obj} {rng.choice(_HABIT_TIMES)}"


def _there_is(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return f"there is {_noun_phrase(_COUNTABLE, rng)} {_place(rng)}"
    return f"there are {_counted(_COUNTABLE, rng)} {_place(rng)}"


def _description(rng: random.Random) -> str:
    owner = rng.choice(POSSESSIVES)
    noun = rng.choice(PEOPLE + _COUNTABLE)
    degree = _maybe(rng.choice(DEGREE), rng, 0.5)
    verb = rng.choice(["is", "was", "looks", "seems"])
    return f"{owner} {noun} {verb} {degree} {rng.choice(_ADJS)} {_maybe(_time(rng), rng, 0.3)}"


def _question(rng: random.Random) -> str:
    base, _, obj = _action(rng)
    aux = rng.choice(["did", "can", "will", "should"])
    return f"{aux} {_subject(rng)} {base} {obj} {_maybe(_place(rng), rng)}"


def _compound(rng: random.Random) -> str:
    _, rested = rng.choice(_INTRANS)
    _, past, obj = _action(rng)
    link = rng.choice(["then", "and then", "but later", "so"])
    return f"{rng.choice(NAMES)} {rested} {link} {past} {obj}"


TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    _did_something, _did_something, _went, _will_go, _rested, _usually, _will_do, _habit,
    _there_is, _description, _question, _compound,
)  # fmt: skip

MIN_WORDS, MAX_WORDS = 4, 12


def generate_sentences(n: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
    """`n` distinct sentences of 4-12 lower-case words, none of them in `exclude`.

    `rng` is a `random.Random`: the same seed gives the same sentences.
    """
    excluded = set(exclude)
    out: dict[str, None] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct sentences after {attempts} tries")
        words = rng.choice(TEMPLATES)(rng).split()
        sentence = " ".join(words)
        if MIN_WORDS <= len(words) <= MAX_WORDS and sentence not in excluded:
            out[sentence] = None
    return list(out)


def vocabulary() -> list[str]:
    """Every word form the grammar can produce, sorted (more than 1000 words)."""
    words = set(NAMES + PLACES + _ADJS + DEGREE + ADVERBS + PLACE_PREPS + MOTION_PREPS + PEOPLE)
    words |= set(_COUNTABLE) | {plural(n) for n in _COUNTABLE}
    for base, past in _TRANS + _FOOD_VERBS + _MOTION + _INTRANS:
        words |= {base, past, third_person(base)}
    words |= set(SUBJECT_PRONOUNS + POSSESSIVES + MODALS + ONES + TEENS + TENS)
    words |= {w for t in _TIMES + _HABIT_TIMES for w in t.split()}
    words |= set(_words("the a an and is are was looks seems there did can then but later so"))
    return sorted(words)
