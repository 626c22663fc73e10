"""Topic vocabularies and item text for the simulated catalog.

Each latent topic owns a category name and its own English nouns and adjectives, so an item's
title and description carry its topic in plain words: sentence embeddings of items that share a
topic land close together, which is what lets the learner generalise from text.
"""

from __future__ import annotations

import random
from typing import NamedTuple


class Topic(NamedTuple):
    """One latent topic: its short name, the catalog category, nouns and adjectives."""

    name: str
    category: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]


def _t(name: str, category: str, nouns: str, adjectives: str) -> Topic:
    return Topic(name, category, tuple(nouns.split(",")), tuple(adjectives.split(",")))


TOPICS: tuple[Topic, ...] = (
    _t("hiking", "Outdoors & Hiking",
       "trail,boots,summit,backpack,tent,compass,ridge,canyon,campfire,lantern,trekking poles,"
       "trail map,waterfall,forest,glacier,hammock,sleeping bag,headlamp,canteen,switchback",
       "rugged,waterproof,lightweight,alpine,scenic,durable,breathable,remote"),
    _t("cooking", "Kitchen & Cooking",
       "skillet,recipe,chef,oven,saucepan,spatula,garlic,basil,dough,broth,marinade,"
       "cutting board,spices,pasta,grill,whisk,casserole,pantry,roast chicken,cookbook",
       "savory,homemade,crispy,tender,rustic,spicy,hearty,delicious"),
    _t("gaming", "Video Games",
       "console,controller,quest,dungeon,multiplayer,level,boss fight,headset,joystick,arcade,"
       "speedrun,guild,loot,tournament,graphics card,gaming keyboard,avatar,sequel,expansion",
       "competitive,immersive,retro,epic,pixelated,strategic,cooperative,addictive"),
    _t("fitness", "Sports & Fitness",
       "dumbbell,workout,treadmill,yoga mat,kettlebell,protein shake,stretching,cardio,gym,"
       "running shoes,marathon,squat rack,resistance band,stopwatch,jump rope,rowing machine",
       "intense,athletic,toned,energetic,strong,fast,endurance,muscular"),
    _t("gardening", "Home & Garden",
       "seeds,soil,compost,trowel,tulips,greenhouse,shovel,garden hose,fertilizer,roses,shrubs,"
       "planter,watering can,herbs,mulch,orchard,seedlings,pruning shears,vegetable patch",
       "blooming,organic,leafy,perennial,lush,fragrant,green,flowering"),
    _t("photography", "Cameras & Photo",
       "camera,lens,tripod,shutter,aperture,flash,portrait,landscape photo,image sensor,"
       "viewfinder,zoom,exposure,polarizing filter,darkroom,memory card,photo editing",
       "sharp,vivid,wide-angle,candid,cinematic,high-resolution,mirrorless,telephoto"),
    _t("music", "Music & Instruments",
       "guitar,piano,drums,violin,amplifier,melody,chord,microphone,vinyl record,headphones,"
       "concert,orchestra,ukulele,metronome,songbook,saxophone,turntable",
       "acoustic,melodic,electric,rhythmic,classical,soulful,harmonic,jazzy"),
    _t("travel", "Travel & Luggage",
       "suitcase,passport,airport,hotel,beach,cruise,itinerary,luggage,resort,island,souvenir,"
       "flight,city guide,backpacking trip,road trip,boarding pass,travel pillow",
       "tropical,exotic,budget,luxury,coastal,adventurous,international,relaxing"),
    _t("pets", "Pet Supplies",
       "dog,puppy,kitten,leash,collar,aquarium,birdcage,kibble,chew toy,cat litter,"
       "grooming brush,hamster,veterinarian,dog treats,scratching post,pet bed",
       "playful,furry,loyal,cuddly,obedient,fluffy,purring,friendly"),
    _t("finance", "Money & Investing",
       "budget,stocks,savings account,retirement,mortgage,portfolio,dividend,tax return,"
       "credit card,bonds,interest rate,pension,index fund,spreadsheet,financial advisor",
       "profitable,frugal,diversified,financial,long-term,secure,passive,tax-free"),
    _t("fashion", "Clothing & Fashion",
       "dress,jacket,jeans,scarf,handbag,sweater,necklace,sunglasses,blouse,leather belt,"
       "high heels,wool coat,wardrobe,silk tie,earrings,denim shirt",
       "elegant,stylish,vintage,casual,trendy,cozy,chic,tailored"),
    _t("science", "Science & Astronomy",
       "telescope,galaxy,planet,microscope,chemistry set,experiment,laboratory,molecule,rocket,"
       "asteroid,physics,fossil,nebula,orbit,star chart,solar system",
       "cosmic,scientific,lunar,molecular,stellar,curious,astronomical,educational"),
    _t("cars", "Automotive",
       "engine,tires,brakes,sedan,motor oil,dashboard,headlights,garage,wrench,horsepower,"
       "steering wheel,convertible,car battery,spark plugs,windshield wipers,exhaust",
       "turbocharged,sporty,reliable,fuel-efficient,powerful,classic,all-wheel,automotive"),
    _t("baby", "Baby & Kids",
       "stroller,diaper,crib,pacifier,toddler,rattle,onesie,baby bottle,nursery,bib,"
       "teddy bear,playpen,baby blanket,high chair,car seat,lullaby",
       "gentle,soft,safe,tiny,soothing,washable,newborn,hypoallergenic"),
    _t("books", "Books & Reading",
       "novel,paperback,mystery,author,chapter,bookshelf,bookmark,poetry,biography,library,"
       "thriller,hardcover,audiobook,short stories,memoir,reading lamp",
       "gripping,bestselling,literary,thoughtful,suspenseful,illustrated,classic,award-winning"),
    _t("coffee", "Coffee & Tea",
       "espresso,coffee beans,grinder,latte,teapot,kettle,mug,dark roast,barista,cappuccino,"
       "green tea,french press,filter paper,cold brew,milk frother,tea leaves",
       "aromatic,bold,smooth,freshly roasted,caffeinated,fair-trade,creamy,rich"),
)

_TITLE = ("{A} {n}", "{A} {n} and {m}", "The {a} {n}", "{A} {n} for {m} lovers", "{N}: {a} {m}")
_DESCRIPTION = (
    "A {a} {n} with {b} {m}.",
    "Perfect for {m} and {o}.",
    "Pairs well with a {b} {o}.",
    "Made for every {a} {m} fan.",
    "Includes {n}, {m} and {o}.",
    "Loved by people into {o}.",
)


def item_text(topic: Topic, rng: random.Random) -> tuple[str, str]:
    """A (title, description) pair whose words come from ``topic``'s vocabulary.

    >>> title, desc = item_text(TOPICS[0], random.Random(1))
    >>> any(word in (title + desc).lower() for word in TOPICS[0].nouns)
    True
    """
    n, m, o = rng.sample(topic.nouns, 3)
    a, b = rng.sample(topic.adjectives, 2)
    words = {"n": n, "m": m, "o": o, "a": a, "b": b, "A": a.capitalize(), "N": n.capitalize()}
    title = rng.choice(_TITLE).format(**words)
    sentences = rng.sample(_DESCRIPTION, 3)
    description = " ".join(s.format(**words) for s in sentences)
    return title, description
