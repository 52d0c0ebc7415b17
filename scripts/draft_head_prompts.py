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

# The DEVELOPMENT set: where the engine's speculation settings for the head (chain length, confidence
# threshold; scripts/tune_draft_length.py) are chosen. Written by hand on topics the templates above do not
# use, so it is disjoint from the training prompts, and from every bench and test prompt (checked there).
DEV_PROMPTS = [
    "What's a simple way to keep my bike chain from rusting?", "How should I store batteries I'm not using?",
    "Why does bread dough need to rest?", "What makes a good password?", "How do submarines dive and surface?",
    "What's the best time of day to water a lawn?", "Can you suggest a warm-up before lifting weights?",
    "Why do my ears pop on an airplane?", "How many teaspoons are in a tablespoon?",
    "What is a good first instrument for a child?", "How do I get candle wax off a tablecloth?",
    "Why do onions caramelize when you cook them slowly?", "Suggest a name for a small bakery.",
    "What should I say when I call in sick to work?", "How do fireflies light up?",
    "What's a polite way to decline an invitation?", "How do I keep cut flowers fresh longer?",
    "Why is the Dead Sea so salty?", "What can I cook with leftover mashed potatoes?",
    "How does a dishwasher get dishes clean?", "Give me an idea for a rainy day with toddlers.",
    "How do hot air balloons go up and down?", "How do I teach my parrot to talk?",
    "What should I look for when buying running shoes?", "Why do mirrors flip left and right?",
    "How long can cooked pasta stay in the fridge?", "What's an easy card trick I can learn?",
    "How do I stop my glasses from fogging up?", "Recommend a relaxing evening routine.",
    "Why do some people sneeze when they see sunlight?", "What does a lighthouse keeper do?",
    "How do I politely ask a neighbor to turn down music?",
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


# A second, wider set (generated as "train3"): more topics and phrasings, so the head sees more kinds of
# replies (the first set's held-out prompts share its templates and topics, which flatters them).
PLACES = [
    "Portugal", "Kenya", "Vietnam", "Peru", "Norway", "Morocco", "New Zealand", "Mongolia", "Chile", "Greece",
    "Thailand", "Scotland", "Egypt", "Argentina", "Finland", "Nepal", "Cuba", "Croatia", "Jordan", "Ghana",
    "the Sahara", "Antarctica", "the Amazon rainforest", "the Great Barrier Reef", "Venice", "Kyoto", "Lisbon",
    "Istanbul", "Reykjavik", "Cape Town", "Vancouver", "Buenos Aires", "Prague", "Marrakesh", "Hanoi",
]
FOODS = [
    "hummus", "kimchi", "risotto", "tofu", "quinoa", "lentil soup", "banana bread", "falafel", "paella",
    "miso soup", "granola", "ratatouille", "couscous", "tacos", "dumplings", "curry", "pesto", "porridge",
    "sushi rice", "chili con carne", "apple crumble", "fried rice", "shakshuka", "gazpacho", "scones",
    "mac and cheese", "lemonade", "iced tea", "smoothies", "flatbread", "omelettes", "stir fry", "pickles",
]
SUBJECTS = [
    "astronomy", "chemistry", "economics", "geology", "psychology", "philosophy", "architecture", "botany",
    "linguistics", "archaeology", "meteorology", "statistics", "nutrition", "photography", "sculpture",
    "jazz", "opera", "poetry", "chess openings", "knitting", "pottery", "origami", "calligraphy", "beekeeping",
    "birdwatching", "rock climbing", "sailing", "fencing", "yoga", "archery", "skateboarding", "gardening",
    "woodworking", "baking", "coding", "robotics", "first aid", "public speaking", "map reading", "camping",
]
OBJECTS = [
    "a pressure cooker", "a smoke detector", "a solar panel", "a barcode", "a zipper", "a QR code",
    "a hearing aid", "a thermos", "a vacuum cleaner", "a wind turbine", "an elevator", "a traffic light",
    "a bicycle gear", "a fridge magnet", "a touch screen", "a smartwatch", "a washing machine", "a kettle",
    "a light bulb", "a printer", "a parachute", "a telescope", "a microscope", "a metronome", "a sundial",
    "a lock and key", "a pencil", "a compass needle", "a fountain pen", "a car battery", "a drone",
]
FEELINGS = [
    "stressed about money", "lonely on weekends", "anxious before flying", "tired all the time",
    "unmotivated at work", "overwhelmed by emails", "nervous about a first date", "homesick",
    "bored with my routine", "frustrated with a coworker", "worried about a friend", "restless at night",
    "stuck on a creative project", "distracted while studying", "grumpy in the morning", "nervous on stage",
]
EVENTS = [
    "a wedding speech", "a job interview", "a first day at school", "a dinner party", "a marathon",
    "a camping weekend", "a house move", "a baby shower", "a picnic in the park", "a long flight",
    "a family reunion", "a garage sale", "a science fair", "a book club meeting", "a surprise party",
    "a team meeting", "a hiking day", "a beach day", "a snowy commute", "a power cut",
]
WEEKDAY_ASKS = [
    "Remind me to buy stamps on my way home.", "Set an alarm for quarter past seven.",
    "Add eggs, flour and butter to the shopping list.", "How long until my next meeting?",
    "Play something upbeat for cleaning the house.", "Dim the bedroom lights to half.",
    "Text Sam that dinner is at eight.", "Start a twenty minute timer for the oven.",
    "What's the forecast for the weekend?", "Remind me to stretch every hour.",
    "Turn off all the lights downstairs.", "Put on a podcast about history.",
    "Schedule a call with Priya tomorrow afternoon.", "How far is the nearest bakery?",
    "Read my last message again.", "Set a reminder for my mom's birthday next week.",
    "Turn the heating up two degrees.", "Play the next episode.", "Snooze the alarm for ten minutes.",
    "Add a note: call the plumber about the leak.", "Is it going to rain this evening?",
    "What's the score of the football game?", "Order a taxi to the train station.",
    "Find a vegetarian recipe for tonight.", "Turn on do not disturb until noon.",
]
CHATS = [
    "I just finished my first half marathon!", "My cat knocked over my coffee again.",
    "I can't decide what to have for lunch.", "I'm learning to play the ukulele.",
    "It's my birthday today.", "I burned the toast this morning.", "We adopted a rescue dog last week.",
    "I'm about to start a new job.", "I finally cleaned out the garage.", "My tomato plants are flowering.",
    "I'm trying to cut down on sugar.", "I lost my keys again.", "I'm planning a trip with friends.",
    "Today was surprisingly relaxing.", "I'm so sleepy this afternoon.", "I passed my driving test!",
    "Guess what, it's snowing outside.", "My neighbor gave me fresh eggs.", "I want to get better at cooking.",
    "I started a journal this week.",
]
TEMPLATES_2: list[tuple[str, list]] = [
    ("What is {} like to visit?", PLACES), ("What language do they speak in {}?", PLACES),
    ("What food is {} known for?", PLACES),
    ("Give me one fun fact about {}.", PLACES),
    ("How do I make {} at home?", FOODS), ("Is {} healthy?", FOODS), ("What goes well with {}?", FOODS),
    ("How long does {} keep in the fridge?", FOODS), ("Where does {} come from?", FOODS),
    ("How do I get started with {}?", SUBJECTS), ("What's the most important idea in {}?", SUBJECTS),
    ("Why do people enjoy {}?", SUBJECTS), ("Can you give me a beginner tip for {}?", SUBJECTS),
    ("What does someone who studies {} do all day?", SUBJECTS),
    ("How does {} work?", OBJECTS), ("Who invented {}?", OBJECTS), ("How do I take care of {}?", OBJECTS),
    ("What was life like before {}?", OBJECTS), ("Why would I need {}?", OBJECTS),
    ("I feel {}. What can I do?", FEELINGS), ("Any advice? I'm {}.", FEELINGS),
    ("How do I prepare for {}?", EVENTS), ("What could go wrong at {}?", EVENTS),
    ("Give me a checklist for {}, but keep it short.", EVENTS), ("What should I wear to {}?", EVENTS),
]


def extra_prompts() -> list[str]:
    """The second training set (not in `build_prompts`, whose order fixes the first set's held-out split)."""
    prompts = [template.format(topic) for template, topics in TEMPLATES_2 for topic in topics]
    prompts += WEEKDAY_ASKS + CHATS
    first = set(build_prompts())
    prompts = [p for p in dict.fromkeys(prompts) if p not in first]
    random.Random(1).shuffle(prompts)
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
