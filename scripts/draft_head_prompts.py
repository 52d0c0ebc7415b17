"""Training prompts for the draft head: voice-assistant questions and commands built from templates.

Why templates: the head learns how the target *answers*, so the prompts only need to be varied, ordinary
and spoken-style; writing a few hundred topics by hand and crossing them with phrasings gives thousands
of prompts with no data download. Every prompt is checked against the bench and test prompts of this
repository (see `forbidden_prompts`), and the shipped metadata lists them so a test can re-check.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

TASKS = [
    "clean a cast iron pan", "change a flat bike tire", "fold a fitted sheet", "unclog a kitchen sink",
    "start a compost bin", "iron a dress shirt", "descale a kettle", "sharpen a kitchen knife",
    "plant tulip bulbs", "remove a coffee stain from a carpet", "tie a bow tie", "jump start a car",
    "make cold brew coffee", "wash a wool sweater", "hang a heavy mirror", "repot a houseplant",
    "back up my phone", "reset my wifi router", "clean my laptop keyboard", "defrost a freezer",
    "make a paper airplane", "bake sourdough bread", "cook rice on the stove", "poach an egg",
    "keep basil alive indoors", "get rid of fruit flies", "wrap a present neatly", "pack a suitcase",
    "write a thank you note", "learn to juggle", "meditate for five minutes", "stretch after a run",
    "start running as a beginner", "memorize a short poem", "practice a speech", "fall asleep faster",
    "make a budget for the month", "save money on groceries", "negotiate a lower phone bill",
    "set up a fish tank", "train a puppy to sit", "trim a cat's claws", "bathe a dog",
    "remove rust from tools", "paint a small room", "patch a hole in drywall", "fix a squeaky door",
    "grow tomatoes on a balcony", "make homemade pizza dough", "roast vegetables", "brew loose leaf tea",
    "make pancakes from scratch", "clean a shower head", "organize a messy closet", "label moving boxes",
    "choose a ripe avocado", "store fresh herbs", "freeze leftover soup", "whistle with my fingers",
]
THINGS = [
    "a black hole", "inflation", "a solar eclipse", "a tsunami", "the stock market", "a vaccine",
    "a credit score", "an allergy", "a rainbow", "a comet", "the ozone layer", "a volcano", "gravity",
    "a calorie", "a hurricane", "electricity", "a compound interest", "a blockchain", "a meteor shower",
    "the water cycle", "a glacier", "jet lag", "a mortgage", "a coral reef", "the placebo effect",
    "a leap second", "a lunar month", "an earthquake", "a sonnet", "a haiku poem's syllable rule",
    "a fever", "caffeine", "a sourdough starter", "a thermostat", "a microwave oven", "an electric car",
    "a heat pump", "a time zone", "a passport", "a podcast", "a carbon footprint", "a food chain",
    "the immune system", "a migraine", "a metaphor", "a prime number", "a fraction", "the metric system",
]
ANIMALS = [
    "penguins", "giraffes", "honeybees", "dolphins", "owls", "elephants", "sloths", "koalas", "sharks",
    "crows", "hummingbirds", "frogs", "camels", "otters", "bats", "ants", "jellyfish", "flamingos",
    "squirrels", "tortoises", "wolves", "parrots", "seahorses", "kangaroos", "pandas", "hedgehogs",
    "butterflies", "whales", "zebras", "snails", "foxes", "llamas",
]
CONCEPTS = [
    "how a refrigerator keeps food cold", "how vaccines train the body", "why leaves change color",
    "how tides work", "why we yawn", "how batteries store energy", "how a rainbow forms",
    "why the ocean is salty", "how bread rises", "why ice floats", "how birds migrate",
    "how the heart pumps blood", "why onions make you cry", "how magnets work", "why we dream",
    "how a bicycle stays upright", "how noise cancelling headphones work", "why the moon has phases",
    "how soap cleans", "why thunder follows lightning", "how a compass works", "why stars twinkle",
    "how plants drink water", "why cats land on their feet", "how a camera focuses",
    "how the internet reaches my home", "why bread goes stale", "how hand sanitizer works",
]
GOALS = [
    "drink more water", "stop procrastinating", "wake up earlier", "read more books", "stay calm before an exam",
    "make new friends in a new city", "keep my plants alive", "spend less time on my phone",
    "learn a new language", "stay warm in winter", "cool down a hot bedroom", "remember names",
    "be more productive in the morning", "eat more vegetables", "keep my kitchen tidy",
    "motivate myself to exercise", "prepare for a job interview", "deal with a noisy neighbor",
    "cheer up a friend", "keep a conversation going", "plan a birthday party", "study for a math test",
    "reduce food waste", "save energy at home", "relax after work", "get better at chess",
]
PEOPLE = [
    "Marie Curie", "Isaac Newton", "Cleopatra", "Nelson Mandela", "Ada Lovelace", "Albert Einstein",
    "Frida Kahlo", "Leonardo da Vinci", "Amelia Earhart", "Galileo", "Charles Darwin", "Mozart",
    "Jane Austen", "Martin Luther King", "Nikola Tesla", "Florence Nightingale", "Confucius",
    "Julius Caesar", "Rosa Parks", "Vincent van Gogh", "Harriet Tubman", "Alexander the Great",
]
PAIRS = [
    ("a virus", "a bacterium"), ("a frog", "a toad"), ("baking soda", "baking powder"),
    ("a crocodile", "an alligator"), ("weather", "season"), ("a lake", "a pond"), ("latitude", "longitude"),
    ("a hurricane", "a tornado"), ("an ape", "a monkey"), ("jam", "jelly"), ("a comet", "an asteroid"),
    ("speed", "velocity"), ("a stock", "a bond"), ("a violin", "a viola"), ("espresso", "drip coffee"),
    ("a moth", "a butterfly"), ("a sweet potato", "a yam"), ("a rabbit", "a hare"), ("fog", "mist"),
    ("a dolphin", "a porpoise"), ("an emu", "an ostrich"), ("a cold", "the flu"), ("sea salt", "table salt"),
]
DURATIONS = [
    "hard boil an egg", "walk five kilometers", "fly from London to Tokyo", "learn to play guitar",
    "charge an electric car", "grow an avocado tree", "bake a potato", "digest a meal", "heal a sprained ankle",
    "read a three hundred page book", "thaw a frozen chicken", "dry a pair of jeans outside",
    "get used to a new time zone", "brew a pot of coffee", "learn to touch type", "paint a bedroom",
]
RECOMMEND = [
    ("podcast", "a long drive"), ("board game", "a family evening"), ("movie", "a rainy Sunday"),
    ("snack", "a hiking trip"), ("song", "a morning workout"), ("gift", "my grandmother"),
    ("hobby", "a quiet weekend"), ("dessert", "a summer picnic"), ("breakfast", "a busy morning"),
    ("houseplant", "a dark apartment"), ("dog breed", "a small flat"), ("card game", "two players"),
    ("soup", "a cold evening"), ("exercise", "a bad back"), ("name", "a pet turtle"),
    ("vegetable", "a beginner gardener"), ("drink", "a hot afternoon"), ("activity", "a kid's birthday"),
]
COMMANDS = [
    "Set a reminder to call my dentist tomorrow at nine.", "Add oat milk to my shopping list.",
    "Wake me up at six thirty.", "Remind me to water the plants on Friday.", "Start a five minute timer for the tea.",
    "Turn the living room lights down a bit.", "Play some relaxing piano music.", "Read me the news headlines.",
    "Send a message to Anna saying I'm running late.", "What's on my calendar this afternoon?",
    "Cancel my seven o'clock alarm.", "Remind me to take my vitamins after lunch.",
    "Add a dentist appointment on Monday at ten.", "Turn up the volume.", "Pause the music.",
    "Call my sister.", "Order more coffee beans.", "Find a pharmacy near me.", "Lock the front door.",
    "Set the thermostat to twenty degrees.", "Navigate to the nearest gas station.",
    "Book a table for two at an Italian place tonight.", "Skip this song.", "What's the traffic like to work?",
]
TRIPS = [
    "a weekend camping trip", "a beach holiday", "a ski trip", "a business trip to Chicago",
    "a week in Iceland", "a road trip with kids", "a hiking trip in the mountains", "a winter visit to Canada",
    "a music festival", "a long train journey", "a city break in Rome", "a sailing trip",
]
SAFETY = [
    "eat raw cookie dough", "swim right after eating", "charge my phone overnight", "drink tap water abroad",
    "leave rice out overnight", "run every day", "give my dog grapes", "reheat chicken twice",
    "use my phone during a thunderstorm", "wash my face with hot water", "eat the skin of a kiwi",
    "freeze bread", "microwave food in plastic containers", "look at the sun through sunglasses",
]
SMALL_TALK = [
    "What's your favorite season and why?", "Do you like music?", "Can you tell me something cheerful?",
    "I'm bored. Any ideas?", "I had a long day at work.", "Good night!", "Thanks for your help earlier.",
    "What can you do for me?", "Say something nice to my friend Tom.", "Do you ever get tired?",
    "I just got a new puppy!", "I'm nervous about my exam tomorrow.", "Tell me a riddle.",
    "Make up a short story about a brave snail.", "Give me a tongue twister.", "What day comes after Tuesday?",
    "Count from one to ten in French.", "How do you say thank you in Japanese?", "Tell me a pun about bread.",
    "Describe the ocean in one sentence.", "Write a two line poem about autumn.", "Flip a coin for me.",
]

TEMPLATES: list[tuple[str, list]] = [
    ("How do I {}?", TASKS), ("What's the easiest way to {}?", TASKS), ("Can you walk me through how to {}?", TASKS),
    ("What is {}?", THINGS), ("Explain {} like I'm ten.", THINGS), ("Quick question, what exactly is {}?", THINGS),
    ("Tell me a fun fact about {}.", ANIMALS), ("What do {} eat?", ANIMALS), ("Where do {} live?", ANIMALS),
    ("How long do {} live?", ANIMALS), ("Can you explain {}?", CONCEPTS), ("I've always wondered {}.", CONCEPTS),
    ("What's a good way to {}?", GOALS), ("Any tips to help me {}?", GOALS), ("How can I {}?", GOALS),
    ("Who was {}?", PEOPLE), ("What is {} famous for?", PEOPLE), ("Tell me one interesting thing about {}.", PEOPLE),
    ("How long does it take to {}?", DURATIONS), ("What should I pack for {}?", TRIPS),
    ("Is it safe to {}?", SAFETY), ("Is it a bad idea to {}?", SAFETY),
]


def build_prompts() -> list[str]:
    """Every template crossed with its topics, plus commands and small talk; a fixed order (seeded)."""
    prompts = [template.format(topic) for template, topics in TEMPLATES for topic in topics]
    prompts += [f"What's the difference between {a} and {b}?" for a, b in PAIRS]
    prompts += [f"Can you recommend a {kind} for {when}?" for kind, when in RECOMMEND]
    prompts += [f"What {kind} would you suggest for {when}?" for kind, when in RECOMMEND]
    prompts += COMMANDS + SMALL_TALK
    prompts = list(dict.fromkeys(prompts))
    random.Random(0).shuffle(prompts)
    return prompts


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def _strings(node: ast.AST) -> list[str]:
    """String constants in a Python file, plus tuples/lists of strings joined (multi-part questions)."""
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found.append(sub.value)
        elif isinstance(sub, (ast.Tuple, ast.List)) and sub.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in sub.elts
        ):
            found.append(" ".join(e.value for e in sub.elts))
    return found


def forbidden_prompts(root: Path) -> set[str]:
    """Normalised sentences (>= 3 words) of every bench and test prompt source in the repository: string
    constants of tests/, llm/ and app/ benchmark modules and any bench/ package, the FP8 calibration
    prompts, and text files of benchmark questions."""
    sources = [*root.glob("tests/**/*.py"), *root.glob("llm/bench*.py"), *root.glob("app/bench*.py"),
               *root.glob("bench*/**/*.py"), *root.glob("scripts/choose_system_prompt.py")]  # fmt: skip
    texts: list[str] = []
    for path in sources:
        try:
            texts += _strings(ast.parse(path.read_text()))
        except SyntaxError:
            continue
    for path in [*root.glob("app/bench*.txt"), *root.glob("bench*/**/*.txt"), *root.glob("tests/**/*.txt"),
                 *root.glob("scripts/data/*.txt")]:  # fmt: skip
        texts += path.read_text().splitlines()
    for path in [*root.glob("llm/data/fp8_calibration.json"), *root.glob("scripts/data/*.json")]:
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else data.get("prompts", [])
        texts += [r["prompt"] if isinstance(r, dict) else str(r) for r in rows if isinstance(r, (dict, str))]
    return {n for t in texts if len((n := normalise(t)).split()) >= 3}


def overlapping(prompts: list[str], forbidden: set[str]) -> list[str]:
    """Prompts equal to a forbidden one after normalisation, or containing one / contained in one."""
    bad = []
    for prompt in prompts:
        n = normalise(prompt)
        if n in forbidden or any((len(f.split()) >= 4 and f in n) or (len(n.split()) >= 4 and n in f)
                                 for f in forbidden):  # fmt: skip
            bad.append(prompt)
    return bad
