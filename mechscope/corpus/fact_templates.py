"""Wordings of WordNet facts in English, French, Spanish, German and Chinese (data only; `facts` fills them in).

Every wording puts the entity ({e}) within its first few words, as a traced prompt does ("Dallas is in the
state of"). Entity names stay as WordNet spells them in every language; only the connecting words and the
category nouns of `CATEGORIES` are translated (a fact whose category has no translation is worded without it).

>>> TEMPLATES["isa_loc"]["de"][0].format(e="Dallas", cat="eine Stadt", loc="Texas")
'Dallas ist eine Stadt in Texas.'
"""

from __future__ import annotations

LANGS = ("en", "fr", "es", "de", "zh")

# category (an instance hypernym's name) → (fr, es, de, zh) with the indefinite article where the language has one
CATEGORIES: dict[str, tuple[str, str, str, str]] = {
    "city": ("une ville", "una ciudad", "eine Stadt", "城市"),
    "town": ("une petite ville", "un pueblo", "eine Kleinstadt", "小镇"),
    "village": ("un village", "un pueblo", "ein Dorf", "村庄"),
    "port": ("un port", "un puerto", "eine Hafenstadt", "港口"),
    "river": ("un fleuve", "un río", "ein Fluss", "河流"),
    "lake": ("un lac", "un lago", "ein See", "湖泊"),
    "sea": ("une mer", "un mar", "ein Meer", "海"),
    "ocean": ("un océan", "un océano", "ein Ozean", "大洋"),
    "bay": ("une baie", "una bahía", "eine Bucht", "海湾"),
    "gulf": ("un golfe", "un golfo", "ein Golf", "海湾"),
    "strait": ("un détroit", "un estrecho", "eine Meerenge", "海峡"),
    "island": ("une île", "una isla", "eine Insel", "岛屿"),
    "archipelago": ("un archipel", "un archipiélago", "ein Archipel", "群岛"),
    "peninsula": ("une péninsule", "una península", "eine Halbinsel", "半岛"),
    "desert": ("un désert", "un desierto", "eine Wüste", "沙漠"),
    "mountain peak": ("un sommet", "una cumbre", "ein Berggipfel", "山峰"),
    "mountain": ("une montagne", "una montaña", "ein Berg", "山"),
    "range": ("une chaîne de montagnes", "una cordillera", "ein Gebirge", "山脉"),
    "volcano": ("un volcan", "un volcán", "ein Vulkan", "火山"),
    "waterfall": ("une cascade", "una cascada", "ein Wasserfall", "瀑布"),
    "national park": ("un parc national", "un parque nacional", "ein Nationalpark", "国家公园"),
    "geographical area": ("une région", "una región", "eine Region", "地区"),
    "region": ("une région", "una región", "eine Region", "地区"),
    "district": ("un district", "un distrito", "ein Bezirk", "区"),
    "county": ("un comté", "un condado", "ein County", "县"),
    "province": ("une province", "una provincia", "eine Provinz", "省"),
    "state": ("un État", "un estado", "ein Staat", "州"),
    "American state": ("un État américain", "un estado de Estados Unidos", "ein US-Bundesstaat", "美国的一个州"),
    "country": ("un pays", "un país", "ein Land", "国家"),
    "European country": ("un pays d'Europe", "un país europeo", "ein europäisches Land", "欧洲国家"),
    "African country": ("un pays d'Afrique", "un país africano", "ein afrikanisches Land", "非洲国家"),
    "Asian country": ("un pays d'Asie", "un país asiático", "ein asiatisches Land", "亚洲国家"),
    "South American country": (
        "un pays d'Amérique du Sud",
        "un país sudamericano",
        "ein südamerikanisches Land",
        "南美洲国家",
    ),
    "continent": ("un continent", "un continente", "ein Kontinent", "大洲"),
    "national capital": ("une capitale", "una capital", "eine Hauptstadt", "首都"),
    "state capital": ("une capitale d'État", "una capital de estado", "eine Hauptstadt", "首府"),
    "provincial capital": ("une capitale provinciale", "una capital de provincia", "eine Provinzhauptstadt", "省会"),
    "university": ("une université", "una universidad", "eine Universität", "大学"),
    "constellation": ("une constellation", "una constelación", "ein Sternbild", "星座"),
    "star": ("une étoile", "una estrella", "ein Stern", "恒星"),
    "planet": ("une planète", "un planeta", "ein Planet", "行星"),
    "pitched battle": ("une bataille", "una batalla", "eine Schlacht", "战役"),
    "battle": ("une bataille", "una batalla", "eine Schlacht", "战役"),
    "war": ("une guerre", "una guerra", "ein Krieg", "战争"),
    "writer": ("un écrivain", "un escritor", "ein Schriftsteller", "作家"),
    "novelist": ("un romancier", "un novelista", "ein Romanautor", "小说家"),
    "poet": ("un poète", "un poeta", "ein Dichter", "诗人"),
    "dramatist": ("un dramaturge", "un dramaturgo", "ein Dramatiker", "剧作家"),
    "composer": ("un compositeur", "un compositor", "ein Komponist", "作曲家"),
    "painter": ("un peintre", "un pintor", "ein Maler", "画家"),
    "old master": ("un maître de la peinture", "un maestro de la pintura", "ein Alter Meister", "古典大师"),
    "sculptor": ("un sculpteur", "un escultor", "ein Bildhauer", "雕塑家"),
    "architect": ("un architecte", "un arquitecto", "ein Architekt", "建筑师"),
    "statesman": ("un homme d'État", "un estadista", "ein Staatsmann", "政治家"),
    "politician": ("un homme politique", "un político", "ein Politiker", "政治家"),
    "diplomat": ("un diplomate", "un diplomático", "ein Diplomat", "外交官"),
    "general": ("un général", "un general", "ein General", "将军"),
    "soldier": ("un soldat", "un soldado", "ein Soldat", "士兵"),
    "king": ("un roi", "un rey", "ein König", "国王"),
    "queen": ("une reine", "una reina", "eine Königin", "女王"),
    "emperor": ("un empereur", "un emperador", "ein Kaiser", "皇帝"),
    "pope": ("un pape", "un papa", "ein Papst", "教皇"),
    "United States President": (
        "un président des États-Unis",
        "un presidente de Estados Unidos",
        "ein US-Präsident",
        "美国总统",
    ),
    "physicist": ("un physicien", "un físico", "ein Physiker", "物理学家"),
    "nuclear physicist": ("un physicien nucléaire", "un físico nuclear", "ein Kernphysiker", "核物理学家"),
    "chemist": ("un chimiste", "un químico", "ein Chemiker", "化学家"),
    "biochemist": ("un biochimiste", "un bioquímico", "ein Biochemiker", "生物化学家"),
    "biologist": ("un biologiste", "un biólogo", "ein Biologe", "生物学家"),
    "physiologist": ("un physiologiste", "un fisiólogo", "ein Physiologe", "生理学家"),
    "mathematician": ("un mathématicien", "un matemático", "ein Mathematiker", "数学家"),
    "astronomer": ("un astronome", "un astrónomo", "ein Astronom", "天文学家"),
    "philosopher": ("un philosophe", "un filósofo", "ein Philosoph", "哲学家"),
    "theologian": ("un théologien", "un teólogo", "ein Theologe", "神学家"),
    "historian": ("un historien", "un historiador", "ein Historiker", "历史学家"),
    "economist": ("un économiste", "un economista", "ein Ökonom", "经济学家"),
    "psychologist": ("un psychologue", "un psicólogo", "ein Psychologe", "心理学家"),
    "sociologist": ("un sociologue", "un sociólogo", "ein Soziologe", "社会学家"),
    "inventor": ("un inventeur", "un inventor", "ein Erfinder", "发明家"),
    "engineer": ("un ingénieur", "un ingeniero", "ein Ingenieur", "工程师"),
    "explorer": ("un explorateur", "un explorador", "ein Entdecker", "探险家"),
    "navigator": ("un navigateur", "un navegante", "ein Seefahrer", "航海家"),
    "doctor": ("un médecin", "un médico", "ein Arzt", "医生"),
    "surgeon": ("un chirurgien", "un cirujano", "ein Chirurg", "外科医生"),
    "actor": ("un acteur", "un actor", "ein Schauspieler", "演员"),
    "actress": ("une actrice", "una actriz", "eine Schauspielerin", "女演员"),
    "film maker": ("un cinéaste", "un cineasta", "ein Filmemacher", "电影制作人"),
    "singer": ("un chanteur", "un cantante", "ein Sänger", "歌手"),
    "dancer": ("un danseur", "un bailarín", "ein Tänzer", "舞蹈家"),
    "comedian": ("un humoriste", "un comediante", "ein Komiker", "喜剧演员"),
    "pianist": ("un pianiste", "un pianista", "ein Pianist", "钢琴家"),
    "violinist": ("un violoniste", "un violinista", "ein Geiger", "小提琴家"),
    "conductor": ("un chef d'orchestre", "un director de orquesta", "ein Dirigent", "指挥家"),
    "jazz musician": ("un musicien de jazz", "un músico de jazz", "ein Jazzmusiker", "爵士音乐家"),
    "rock star": ("une star du rock", "una estrella del rock", "ein Rockstar", "摇滚明星"),
    "journalist": ("un journaliste", "un periodista", "ein Journalist", "记者"),
    "businessman": ("un homme d'affaires", "un empresario", "ein Geschäftsmann", "商人"),
    "industrialist": ("un industriel", "un industrial", "ein Industrieller", "实业家"),
    "prophet": ("un prophète", "un profeta", "ein Prophet", "先知"),
    "Apostle": ("un apôtre", "un apóstol", "ein Apostel", "使徒"),
    "saint": ("un saint", "un santo", "ein Heiliger", "圣人"),
    "religious leader": ("un chef religieux", "un líder religioso", "ein religiöser Führer", "宗教领袖"),
    "tennis player": ("un joueur de tennis", "un tenista", "ein Tennisspieler", "网球运动员"),
    "golfer": ("un golfeur", "un golfista", "ein Golfer", "高尔夫球手"),
    "ballplayer": ("un joueur de baseball", "un jugador de béisbol", "ein Baseballspieler", "棒球运动员"),
    "prizefighter": ("un boxeur", "un boxeador", "ein Boxer", "拳击手"),
    "fictional character": ("un personnage de fiction", "un personaje de ficción", "eine fiktive Figur", "虚构人物"),
    "mythical being": ("un être mythique", "un ser mítico", "ein mythisches Wesen", "神话人物"),
    "Greek deity": ("une divinité grecque", "una deidad griega", "eine griechische Gottheit", "希腊神祇"),
    "Roman deity": ("une divinité romaine", "una deidad romana", "eine römische Gottheit", "罗马神祇"),
    "Hindu deity": ("une divinité hindoue", "una deidad hindú", "eine hinduistische Gottheit", "印度教神祇"),
    "Norse deity": ("une divinité nordique", "una deidad nórdica", "eine nordische Gottheit", "北欧神祇"),
    "Egyptian deity": ("une divinité égyptienne", "una deidad egipcia", "eine ägyptische Gottheit", "埃及神祇"),
    "book": ("un livre", "un libro", "ein Buch", "书"),
    "tower": ("une tour", "una torre", "ein Turm", "塔"),
    "bridge": ("un pont", "un puente", "eine Brücke", "桥"),
    "suspension bridge": ("un pont suspendu", "un puente colgante", "eine Hängebrücke", "悬索桥"),
    "canal": ("un canal", "un canal", "ein Kanal", "运河"),
    "street": ("une rue", "una calle", "eine Straße", "街道"),
}
# French says "à Paris" but "en France": a location whose own category names a settlement takes "à"
SETTLEMENTS = ("city", "town", "capital", "village", "port", "borough", "district")
# categories that make "{e} is the capital of {loc}" out of "is a national capital in {loc}"
CAPITALS = frozenset({"national capital", "state capital", "provincial capital", "capital"})
# an instance hypernym that names a sport: "Babe Ruth played baseball"
SPORTS = {
    "ballplayer": "baseball",
    "tennis player": "tennis",
    "golfer": "golf",
    "prizefighter": "boxing",
    "basketball player": "basketball",
    "football player": "football",
    "hockey player": "hockey",
    "skater": "skating",
}

# kind → language → wordings. Placeholders: e entity, cat category (English: "a city"; other languages from
# CATEGORIES), language a language name, loc location (in_loc / In_loc: French "à Paris", "en France"), org a group, others a list ("A, B and C"), alias another name,
# sport, nat a nationality noun, definition a gloss, a / b antonyms. Persons get the past tense (the _past kinds).
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "isa_loc": {
        "en": ["{e} is {cat} in {loc}.", "{e} is {cat} located in {loc}.", "{e}, {loc}, is {cat}."],
        "fr": ["{e} est {cat} de {loc}.", "{e} ({loc}) est {cat}."],
        "es": ["{e} es {cat} de {loc}.", "{e} ({loc}) es {cat}."],
        "de": ["{e} ist {cat} in {loc}.", "{e} ({loc}) ist {cat}."],
        "zh": ["{e}是位于{loc}的{cat}。"],
    },
    "loc": {
        "en": ["{e} is located in {loc}.", "{e} is in {loc}.", "{e} lies in {loc}.", "Q: Where is {e}?\nA: In {loc}."],
        "fr": ["{e} se trouve {in_loc}.", "Où se trouve {e} ? {In_loc}."],
        "es": ["{e} está en {loc}.", "{e} se encuentra en {loc}.", "¿Dónde está {e}? En {loc}."],
        "de": ["{e} liegt in {loc}.", "{e} befindet sich in {loc}.", "Wo liegt {e}? In {loc}."],
        "zh": ["{e}位于{loc}。", "{e}在{loc}。"],
    },
    "capital": {
        "en": ["{e} is the capital of {loc}.", "{e} is the capital city of {loc}.", "{e}: the capital of {loc}."],
        "fr": ["{e} est la capitale de {loc}."],
        "es": ["{e} es la capital de {loc}."],
        "de": ["{e} ist die Hauptstadt von {loc}."],
        "zh": ["{e}是{loc}的首都。"],
    },
    "isa": {
        "en": ["{e} is {cat}.", "{e} is known as {cat}.", "{e}: {cat}."],
        "fr": ["{e} est {cat}."],
        "es": ["{e} es {cat}."],
        "de": ["{e} ist {cat}."],
        "zh": ["{e}是{cat}。"],
    },
    "isa_past": {
        "en": ["{e} was {cat}.", "{e} was a famous {bare}.", "{e} is remembered as {cat}.", "{e} worked as {cat}."],
        "fr": ["{e} était {cat}.", "{e} fut {cat}."],
        "es": ["{e} fue {cat}.", "{e} era {cat}."],
        "de": ["{e} war {cat}."],
        "zh": ["{e}是一位{cat}。"],
    },
    "sport": {
        "en": ["{e} played {sport}.", "{e} was a {sport} player.", "{e} is known for {sport}."],
    },
    "alias": {
        "en": ["{e} is also called {alias}.", "{e}, also known as {alias}."],
        "fr": ["{e} est aussi appelé {alias}."],
        "es": ["{e} también se conoce como {alias}."],
        "de": ["{e} ist auch als {alias} bekannt."],
    },
    "contains": {
        "en": ["{e} contains {others}.", "{e} includes {others}.", "Places in {e} include {others}."],
        "fr": ["{e} comprend {others}."],
        "es": ["{e} incluye {others}."],
        "de": ["{e} umfasst {others}."],
    },
    "member_of": {
        "en": ["{e} is a member of {org}.", "{e} belongs to {org}.", "{e} was a member of {org}."],
        "fr": ["{e} est membre de {org}."],
        "es": ["{e} es miembro de {org}."],
        "de": ["{e} ist Mitglied von {org}."],
    },
    "has_members": {
        "en": ["{e} had these members: {others}.", "Members of {e} include {others}."],
        "de": ["Zu {e} gehören {others}."],
    },
    "language": {
        "en": [
            "In {e}, people speak {language}.",
            "{e}: the language spoken there is {language}.",
            "The language of {e} is {language}.",
        ],
        "fr": ["En {e}, on parle {language}."],
        "es": ["En {e} se habla {language}."],
        "de": ["In {e} spricht man {language}."],
        "zh": ["{e}的人说{language}。"],
    },
    "spoken_in": {
        "en": ["{e} is spoken in {loc}.", "{e} is a language of {loc}."],
    },
    "nationality": {
        "en": ["{e}: a person from {loc}.", "{A_e} is a person from {loc}.", "{E} means someone from {loc}."],
    },
    "gloss": {
        "en": ["{e} is {definition}.", "{e}: {definition}.", "What is {e}? {Definition}."],
    },
    # common words (English text about English words; antonyms also in the other languages)
    "kind_of": {
        "en": ["{A_e} is a kind of {h}.", "{E} is a type of {h}.", "{E}: a kind of {h}."],
    },
    "kinds": {
        "en": ["Kinds of {e} include {others}.", "{E} comes in several kinds: {others}."],
    },
    "parts": {
        "en": ["{A_e} has these parts: {others}.", "Parts of {a_e}: {others}."],
    },
    "synonym": {
        "en": ["{E} is also called {alias}.", "Another word for {e} is {alias}."],
    },
    "word_gloss": {
        "en": ["{A_e} is {definition}.", "{E}: {definition}.", 'The word "{e}" means {definition}.'],
    },
    "verb_gloss": {
        "en": ["To {e} means to {definition}.", "{E}: to {definition}.", '"{e}" (verb): {definition}.'],
    },
    "verb_kind": {
        "en": ["To {e} is a way to {h}.", "To {e} is to {h} in a certain way."],
    },
    "adj_gloss": {
        "en": ["{E} means {definition}.", '"{e}" (adjective): {definition}.'],
    },
    "similar": {
        "en": ["{E} is similar in meaning to {alias}.", "{E} means much the same as {alias}."],
    },
    "antonym": {
        "en": [
            "{E} is the opposite of {b}.",
            '"{e}" is the opposite of "{b}".',
            "{E} and {b} are antonyms.",
            "Antonym of {e}: {b}.",
        ],
        "fr": ["« {e} » est le contraire de « {b} » en anglais.", "« {e} » : en anglais, son contraire est « {b} »."],
        "es": ["«{e}» es lo contrario de «{b}» en inglés.", "«{e}»: en inglés, su contrario es «{b}»."],
        "de": ["„{e}“ ist im Englischen das Gegenteil von „{b}“.", "„{e}“: das englische Gegenteil ist „{b}“."],
        "zh": ["“{e}”的反义词是“{b}”（英语）。"],
    },
}
AND = {"en": "and", "fr": "et", "es": "y", "de": "und", "zh": "和"}
