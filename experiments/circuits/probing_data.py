"""The texts of the sparse-probing experiment, written for this project (no download).

Four pools of short texts, each a few sentences or lines:

* `ENGLISH`: everyday English prose without digits;
* `FRENCH`: everyday French prose without digits (not translations of the English);
* `PYTHON`: small Python functions, classes and loops;
* `numbers(n, seed)`: English sentences with numbers (dates, prices, times, counts, codes),
  generated from templates with seeded random values.
"""

import numpy as np

__all__ = ["ENGLISH", "FRENCH", "PYTHON", "SHIPPED", "numbers", "pools"]

ENGLISH = [
    "The kettle clicked off just as the rain started, so we stayed inside and read.",
    "My neighbour keeps bees on her roof and sells the honey at the corner shop.",
    "He forgot his umbrella again and arrived at the meeting completely soaked.",
    "The library closes early on Sundays, which annoys everyone who studies there.",
    "We walked along the river until the path turned into mud and reeds.",
    "She painted the kitchen a pale yellow that looks warm even in winter.",
    "The old bridge was repaired last summer after years of complaints.",
    "Our cat sleeps on the warmest chair in the house and refuses to share it.",
    "The bakery on the hill makes bread that is still warm at breakfast time.",
    "After the storm, the garden was full of broken branches and fallen apples.",
    "They argued about the map for an hour before admitting they were lost.",
    "The museum has a quiet room where visitors can sit and look at one painting.",
    "I left the window open, and now the whole room smells of cut grass.",
    "The train was late, but the conductor apologised with a cheerful smile.",
    "Most of the village came to the market to buy cheese and fresh vegetables.",
    "His grandmother taught him to fish with a simple line and a lot of patience.",
    "The teacher asked the children to write a short story about a lost key.",
    "When the power failed, we cooked soup on the camping stove in the garage.",
    "The mountain road is narrow, steep and beautiful in the early morning light.",
    "She keeps a notebook of words she likes and reads it when she feels tired.",
    "The festival was cancelled because of the wind, and the tents were packed away.",
    "A small boat drifted past the harbour wall with nobody on board.",
    "The doctor told him to rest, drink water and stop reading the news at night.",
    "Every autumn the park fills with people collecting chestnuts under the trees.",
    "We painted the fence together and ended up with more paint on our clothes.",
    "The coffee machine at work makes a noise like a tired dragon.",
    "They planted a row of tulips along the path, but the squirrels dug them up.",
    "The choir practised in the cold church until their voices finally warmed up.",
    "A fox crossed the road in front of us and disappeared into the hedge.",
    "My brother is learning the guitar, and the whole family is learning patience.",
    "The shop sells old maps, postcards and letters written by strangers.",
    "She ran to catch the bus and waved at the driver, who kindly waited.",
    "The snow turned the city silent, and the children went sledging in the park.",
    "He repaired the clock himself and now it chimes at the wrong hour.",
    "We found an old photograph of the house when it was still a farm.",
    "The wind carried the smell of the sea far inland that afternoon.",
    "Our teacher reads poems aloud on Fridays, and nobody ever wants to leave.",
    "The market stall sells spices from many countries in small paper bags.",
    "After dinner we played cards by candlelight and told terrible jokes.",
    "The hotel had a garden with a fountain and a very proud peacock.",
    "She wrote a letter to her future self and hid it behind a loose brick.",
    "The bus climbed slowly through the hills while everyone fell asleep.",
    "The carpenter measured twice, cut once and still had to start again.",
    "Thick fog covered the valley, and the church bells sounded very far away.",
    "The new bakery has long queues, but the croissants are worth the wait.",
    "He keeps his tools in perfect order and lends them to nobody.",
    "On quiet evenings the lake reflects the sky so well that it looks like glass.",
    "The students organised a concert to raise money for the school library.",
    "The ferry rocked gently as the passengers watched the island come closer.",
    "My aunt grows tomatoes on her balcony and talks to them every morning.",
    "The film was so long that half of the audience left before the ending.",
    "A strong smell of oranges came from the kitchen where jam was cooking.",
    "The gardener raked the leaves into a pile, and the dog jumped straight in.",
    "We stayed in a cottage with a leaking roof and a wonderful view.",
    "The old radio only plays one station, which happens to play jazz all night.",
    "She trained for months and finally ran the whole race without stopping.",
    "The children built a castle of cardboard boxes in the living room.",
    "He writes slowly with a fountain pen and never crosses anything out.",
    "The farmer checked the sky, frowned and brought the hay in early.",
    "Lanterns were hung across the square for the summer celebration.",
]

FRENCH = [
    "Le matin, la boulangerie du quartier sent le pain chaud et le beurre.",
    "Nous avons marché le long de la rivière jusqu'au vieux moulin abandonné.",
    "Ma sœur apprend le piano et répète les mêmes notes tous les soirs.",
    "Il pleuvait si fort que la rue ressemblait à un petit ruisseau.",
    "Le chat dort sur le canapé pendant que la pluie tombe sur les vitres.",
    "Les enfants ont construit une cabane au fond du jardin avec des planches.",
    "Elle a oublié ses clés chez une amie et a dû attendre devant la porte.",
    "Le marché du samedi attire beaucoup de monde malgré le froid.",
    "Nous avons mangé une soupe de légumes au coin du feu après la promenade.",
    "Le train est arrivé en retard, mais personne ne semblait pressé.",
    "Mon grand-père raconte toujours la même histoire de pêche au lac.",
    "La bibliothèque municipale ferme plus tôt pendant les vacances d'été.",
    "Il a repeint les volets en bleu et la maison paraît plus gaie.",
    "Les feuilles mortes couvrent le chemin qui mène à l'église du village.",
    "Elle écrit des lettres à la main parce qu'elle trouve cela plus sincère.",
    "Le vent a renversé les chaises de la terrasse pendant la nuit.",
    "Nous cherchions un café ouvert, mais toute la ville dormait encore.",
    "Le professeur a demandé aux élèves de lire un poème à voix haute.",
    "Au bord de la mer, les mouettes volent au-dessus des bateaux de pêche.",
    "Ce musée possède une salle calme où l'on peut regarder un seul tableau.",
    "Mon voisin cultive des tomates sur son balcon et leur parle chaque matin.",
    "La neige a rendu la ville silencieuse et les enfants sont sortis jouer.",
    "Il faut bien mélanger la farine et les œufs avant d'ajouter le lait.",
    "Le concert a commencé en retard à cause d'une panne de courant.",
    "Elle garde un carnet où elle note les mots qu'elle aime entendre.",
    "Les randonneurs se sont arrêtés près d'une source pour boire un peu d'eau.",
    "Le petit chien aboie chaque fois que le facteur passe devant la maison.",
    "Nous avons trouvé une vieille photo de la ferme dans le grenier.",
    "Le brouillard couvrait la vallée et on entendait à peine les cloches.",
    "Après le dîner, nous avons joué aux cartes à la lumière des bougies.",
    "La fromagerie du coin vend des fromages de toutes les régions.",
    "Il a réparé la vieille horloge, mais elle sonne maintenant à la mauvaise heure.",
    "Les étudiants ont organisé une fête pour financer leur voyage de fin d'année.",
    "Le jardinier a ramassé les feuilles et le chien a sauté dans le tas.",
    "Ma tante prépare une confiture d'abricots qui embaume toute la cuisine.",
    "Le bateau s'éloignait lentement du port sous un ciel très gris.",
    "Elle a couru pour attraper le bus et le chauffeur l'a gentiment attendue.",
    "Les lampions ont été accrochés sur la place pour la fête du village.",
    "Nous avons passé la nuit dans un chalet sans électricité mais très confortable.",
    "Le médecin lui a conseillé de se reposer et de boire beaucoup d'eau.",
    "Ce film était si long que la moitié de la salle est partie avant la fin.",
    "Le renard a traversé la route devant nous puis a disparu dans la haie.",
    "Les pommes du verger sont tombées pendant l'orage de la semaine dernière.",
    "Il écrit lentement avec un stylo plume et ne rature jamais rien.",
    "La chorale répète dans l'église froide jusqu'à ce que les voix se réchauffent.",
    "On dit que cette rue était autrefois un canal où passaient les barques.",
    "Mon frère a acheté un vélo d'occasion et le répare chaque dimanche.",
    "Le parfum des oranges venait de la cuisine où cuisait la confiture.",
    "La route de montagne est étroite, raide et magnifique au lever du soleil.",
    "Les voisins se sont réunis dans la cour pour partager un grand repas.",
    "Elle a planté des tulipes le long de l'allée, mais les écureuils les ont mangées.",
    "Le ferry tanguait doucement tandis que l'île se rapprochait.",
    "Nous avons regardé les étoiles depuis la colline jusqu'à minuit.",
    "Le boulanger se lève avant l'aube pour préparer les croissants.",
    "Une odeur de café flottait dans le couloir de l'immeuble.",
    "Les élèves ont écrit une histoire sur une clé perdue dans la forêt.",
    "Le fermier a regardé le ciel, a froncé les sourcils et a rentré le foin.",
    "La vieille radio ne capte qu'une station qui joue du jazz toute la nuit.",
    "Il range ses outils avec soin et ne les prête à personne.",
    "Quand le courant a été coupé, nous avons fait la cuisine sur un réchaud.",
]

PYTHON = [
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n",
    "for name in names:\n    if name.startswith('a'):\n        print(name.upper())\n",
    "class Counter:\n    def __init__(self):\n        self.count = 0\n\n"
    "    def add(self, n=1):\n        self.count += n\n",
    "with open(path) as f:\n    lines = [line.strip() for line in f if line.strip()]\n",
    "def is_even(n):\n    return n % 2 == 0\n\nevens = [x for x in items if is_even(x)]\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
    "import os\n\nfor root, dirs, files in os.walk(top):\n"
    "    for file in files:\n        print(os.path.join(root, file))\n",
    "def flatten(nested):\n    out = []\n    for part in nested:\n"
    "        out.extend(part)\n    return out\n",
    "words = text.split()\ncounts = {}\nfor word in words:\n"
    "    counts[word] = counts.get(word, 0) + 1\n",
    "def clamp(x, low, high):\n    return max(low, min(x, high))\n",
    "while queue:\n    node = queue.pop()\n    if node not in seen:\n"
    "        seen.add(node)\n        queue.extend(graph[node])\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "result = sorted(records, key=lambda r: r['date'], reverse=True)\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n",
    "if not args.quiet:\n    logger.info('processing %s', filename)\n",
    "def merge(left, right):\n    result = []\n    while left and right:\n"
    "        result.append(left.pop(0) if left[0] < right[0] else right.pop(0))\n"
    "    return result + left + right\n",
    "squares = {n: n * n for n in range(limit)}\n",
    "def greet(name, greeting='hello'):\n    return f'{greeting}, {name}!'\n",
    "for i, row in enumerate(rows):\n    if row is None:\n        continue\n"
    "    table[i] = row\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n",
    "def unique(seq):\n    seen = set()\n    return [x for x in seq if not "
    "(x in seen or seen.add(x))]\n",
    "parser = argparse.ArgumentParser()\nparser.add_argument('--verbose', "
    "action='store_true')\nargs = parser.parse_args()\n",
    "def safe_divide(a, b):\n    if b == 0:\n        raise ZeroDivisionError('b is zero')\n"
    "    return a / b\n",
    "lines = [line.rstrip('\\n') for line in sys.stdin]\n",
    "def chunks(seq, size):\n    for start in range(0, len(seq), size):\n"
    "        yield seq[start:start + size]\n",
    "total = 0\nfor item in cart:\n    total += item.price * item.quantity\n",
    "def find(items, target):\n    for index, item in enumerate(items):\n"
    "        if item == target:\n            return index\n    return -1\n",
    "@property\ndef area(self):\n    return self.width * self.height\n",
    "def load_users(db):\n    rows = db.execute('select name, email from users')\n"
    "    return [User(*row) for row in rows]\n",
    "assert isinstance(config, dict), 'config must be a dict'\n",
    "def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))\n",
    "matrix = [[0] * width for _ in range(height)]\n",
    "def retry(func, attempts):\n    for attempt in range(attempts):\n        try:\n"
    "            return func()\n        except OSError:\n            pass\n",
    "class Animal:\n    def speak(self):\n        raise NotImplementedError\n\n"
    "class Dog(Animal):\n    def speak(self):\n        return 'woof'\n",
    "names = [user.name for user in users if user.active]\n",
    "def to_celsius(fahrenheit):\n    return (fahrenheit - 32) * 5 / 9\n",
    "if __name__ == '__main__':\n    main()\n",
    "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in 'aeiou')\n",
    "data = json.loads(response.text)\nfor entry in data['items']:\n"
    "    print(entry['id'], entry['title'])\n",
    "def transpose(matrix):\n    return [list(col) for col in zip(*matrix)]\n",
    "def memo(func):\n    cache = {}\n    def wrapper(n):\n        if n not in cache:\n"
    "            cache[n] = func(n)\n        return cache[n]\n    return wrapper\n",
    "path = pathlib.Path(folder) / 'output.txt'\npath.write_text(report)\n",
    "def binary_search(items, target):\n    low, high = 0, len(items) - 1\n"
    "    while low <= high:\n        mid = (low + high) // 2\n",
    "for key, value in sorted(options.items()):\n    print(f'{key} = {value}')\n",
    "def word_lengths(words):\n    return {word: len(word) for word in words}\n",
    "class Timer:\n    def __enter__(self):\n        self.start = time.time()\n"
    "        return self\n",
    "def is_palindrome(text):\n    cleaned = ''.join(ch for ch in text if ch.isalnum())\n"
    "    return cleaned == cleaned[::-1]\n",
    "response = requests.get(url, timeout=timeout)\nresponse.raise_for_status()\n",
    "def pairs(items):\n    return [(a, b) for a in items for b in items if a < b]\n",
    "def parse_line(line):\n    key, _, value = line.partition('=')\n"
    "    return key.strip(), value.strip()\n",
    "queue = collections.deque([start])\nvisited = {start}\n",
    "def average_score(students):\n    scores = [s.score for s in students]\n"
    "    return sum(scores) / max(len(scores), 1)\n",
    "def first_word(text):\n    parts = text.split()\n    return parts[0] if parts else ''\n",
    "class Config:\n    debug = False\n    name = 'default'\n\n"
    "    def update(self, **kwargs):\n        vars(self).update(kwargs)\n",
    "def all_positive(values):\n    return all(v > 0 for v in values)\n",
    "def split_name(full_name):\n    first, *rest = full_name.split()\n"
    "    return first, ' '.join(rest)\n",
    "def normalise(vector):\n    length = math.sqrt(sum(x * x for x in vector))\n"
    "    return [x / length for x in vector]\n",
    "def last_lines(path, n):\n    with open(path) as f:\n        return f.readlines()[-n:]\n",
    "if user is None or not user.is_admin:\n    raise PermissionError('admins only')\n",
]

_NUMBER_TEMPLATES = [
    "The train leaves at {h}:{m:02d} and the journey takes {a} minutes.",
    "In {y}, the town had {big} inhabitants and {a} schools.",
    "The jacket costs {p}.{c:02d} euros, down from {q} euros last week.",
    "Please call {ph} before {h}:{m:02d} to confirm the booking.",
    "She was born on {d} March {y} in a house on {a} Station Road.",
    "The recipe needs {a} eggs, {g} grams of flour and {b} millilitres of milk.",
    "Our flight number is {fl} and it departs from gate {a}.",
    "The bridge is {big} metres long and was finished in {y}.",
    "Room {r} is on floor {b}, next to the lift.",
    "He ran {a} kilometres in {m} minutes and {s} seconds.",
    "The invoice {inv} is due on {d}/{mo:02d}/{y}.",
    "About {pc} percent of the {big} visitors came back the next year.",
    "The score was {a} to {b} after {m} minutes of play.",
    "Chapter {a} starts on page {g}.",
    "The parcel weighs {a}.{c:02d} kilograms and costs {q} euros to send.",
    "Bus {r} stops here every {a} minutes between {h}:00 and {hh}:00.",
]


SHIPPED = min(len(ENGLISH), len(FRENCH), len(PYTHON))
"""Texts of each shipped kind (the number texts are generated on demand)."""


def numbers(n: int, seed: int) -> list[str]:
    """`n` English sentences with numbers: the templates in turn, with random values."""
    rng = np.random.default_rng(seed)

    def draw():
        r = rng.integers
        return dict(
            h=r(5, 12),
            hh=r(18, 24),
            m=r(0, 60),
            s=r(0, 60),
            a=r(2, 40),
            b=r(2, 12),
            g=r(100, 900),
            d=r(1, 29),
            mo=r(1, 13),
            y=r(1850, 2030),
            big=r(1000, 90000),
            p=r(10, 200),
            q=r(10, 300),
            c=r(0, 100),
            pc=r(5, 95),
            r=r(100, 999),
            ph=f"0{r(1, 10)} {r(10, 100)} {r(10, 100)} {r(10, 100)} {r(10, 100)}",
            fl=f"{chr(65 + r(0, 26))}{chr(65 + r(0, 26))}{r(100, 9999)}",
            inv=f"{r(2000, 2030)}-{r(1000, 99999)}",
        )

    return [
        _NUMBER_TEMPLATES[i % len(_NUMBER_TEMPLATES)].format(**draw()) for i in range(n)
    ]


def pools(seed: int, n_numbers: int) -> dict[str, list[str]]:
    """Every pool: English, French and Python as shipped, `n_numbers` number sentences."""
    return {
        "english": list(ENGLISH),
        "french": list(FRENCH),
        "python": list(PYTHON),
        "numbers": numbers(n_numbers, seed),
    }
