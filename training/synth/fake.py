"""Random FAKE content: names, numbers, addresses, plate strings. Nothing here is real personal data.

All functions take a ``numpy.random.Generator`` so output is reproducible for a seed.
"""

from __future__ import annotations

import numpy as np

Rng = np.random.Generator

KO_SURNAMES = list(
    "김이박최정강조윤장임한오서신권황안송류홍전고문양손배백허유남심노하곽성차주우구민진나엄채원천방공현함변염여추도소석선설마길연위표명기반왕금옥육인맹제모탁국"
)
KO_GIVEN = list(
    "민서준지현우도윤하은유진수영재혜성동훈예주연아나경희태호상철진명숙자정미순옥보람한솔빛누리다솜가온세찬"
)
KO_SIDO = [
    "서울특별시",
    "부산광역시",
    "대구광역시",
    "인천광역시",
    "광주광역시",
    "대전광역시",
    "울산광역시",
    "세종특별자치시",
    "경기도",
    "강원특별자치도",
    "충청북도",
    "충청남도",
    "전북특별자치도",
    "전라남도",
    "경상북도",
    "경상남도",
    "제주특별자치도",
]
KO_GU = [
    "종로구",
    "중구",
    "용산구",
    "성동구",
    "마포구",
    "서초구",
    "강남구",
    "송파구",
    "해운대구",
    "수성구",
    "남동구",
    "유성구",
    "북구",
    "동구",
    "서구",
    "수원시 팔달구",
    "성남시 분당구",
    "고양시 일산동구",
    "청주시 상당구",
    "천안시 동남구",
    "전주시 완산구",
    "포항시 남구",
    "창원시 의창구",
    "제주시",
    "춘천시",
    "원주시",
    "김해시",
    "평택시",
    "안양시 동안구",
    "용인시 기흥구",
]
KO_ROAD_A = [
    "한빛",
    "누리",
    "새솔",
    "푸른",
    "햇살",
    "별빛",
    "은하",
    "가람",
    "솔내",
    "다온",
    "하늘",
    "미래",
    "중앙",
    "신촌",
    "문화",
    "평화",
    "동산",
    "대학",
    "시장",
    "역전",
    "공원",
    "강변",
    "호수",
    "벚꽃",
]
KO_ROAD_B = ["로", "길", "대로"]
KO_DONG = ["동", "아파트", "빌라", "오피스텔", "타운"]
KO_ITEMS = ["의류", "도서", "생활용품", "식품", "화장품", "전자제품", "잡화", "완구", "신발", "주방용품"]
KO_COURIER = [
    "한빛택배",
    "누리로지스",
    "바로배송",
    "새솔익스프레스",
    "온길택배",
    "하늘물류",
    "다온택배",
    "모두배송",
    "빠른발",
    "별빛로지스",
]
KO_REGIONS_PLATE = [
    "서울",
    "부산",
    "대구",
    "인천",
    "광주",
    "대전",
    "울산",
    "세종",
    "경기",
    "강원",
    "충북",
    "충남",
    "전북",
    "전남",
    "경북",
    "경남",
    "제주",
]
# Hangul used on Korean plates: private cars, commercial (yellow), rental, delivery.
KO_PLATE_PRIVATE = list("가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주")
KO_PLATE_COMMERCIAL = list("바사아자배")
KO_PLATE_RENTAL = list("하허호")

LATIN_FIRST = [
    "ALEX",
    "MARIA",
    "JONAS",
    "LENA",
    "TOMAS",
    "EVA",
    "NOAH",
    "SOFIA",
    "LUCAS",
    "MIA",
    "OLIVER",
    "EMMA",
    "DAVID",
    "ANNA",
    "MARC",
    "ELENA",
    "PAUL",
    "CLARA",
    "IVAN",
    "NORA",
    "SAM",
    "JULIA",
    "LEON",
    "ROSA",
    "OSCAR",
    "IRIS",
    "HUGO",
    "VERA",
    "FELIX",
    "ALMA",
    "KAI",
    "LUNA",
    "MINA",
    "JIN",
    "YUKI",
    "ARJUN",
    "PRIYA",
    "OMAR",
    "LEILA",
    "DIEGO",
]
LATIN_LAST_SYL = [
    "BER",
    "MAN",
    "SON",
    "LIN",
    "DOR",
    "VAL",
    "KOR",
    "TEN",
    "RIS",
    "MOR",
    "GAN",
    "LEV",
    "SEN",
    "TAL",
    "RO",
    "NA",
    "VI",
    "KA",
    "DE",
    "LA",
    "MA",
    "NO",
    "STEIN",
    "FIELD",
    "WOOD",
]
LATIN_STREETS = [
    "MAPLE",
    "OAK",
    "PINE",
    "CEDAR",
    "ELM",
    "LAKE",
    "HILL",
    "RIVER",
    "PARK",
    "MAIN",
    "MILL",
    "SUNSET",
    "HARBOR",
    "CHURCH",
    "MARKET",
    "STATION",
    "GARDEN",
    "FOREST",
]
LATIN_CITIES = [
    "SPRINGFIELD",
    "RIVERTON",
    "LAKEWOOD",
    "FAIRVIEW",
    "MIDDLETON",
    "GREENVILLE",
    "OAKDALE",
    "BRIDGEPORT",
    "KINGSTON",
    "NEWPORT",
    "ASHFORD",
    "CLAYTON",
    "MILTON",
    "WESTBROOK",
]
US_STATES = [
    "CA",
    "TX",
    "NY",
    "FL",
    "IL",
    "PA",
    "OH",
    "GA",
    "NC",
    "MI",
    "NJ",
    "VA",
    "WA",
    "AZ",
    "MA",
    "TN",
    "IN",
    "MO",
    "MD",
    "WI",
    "CO",
    "MN",
    "SC",
    "AL",
    "LA",
    "KY",
    "OR",
    "OK",
    "CT",
    "UT",
    "NV",
    "IA",
]
US_STATE_NAMES = [
    "CALIFORNIA",
    "TEXAS",
    "NEW YORK",
    "FLORIDA",
    "ILLINOIS",
    "OHIO",
    "GEORGIA",
    "MICHIGAN",
    "VIRGINIA",
    "WASHINGTON",
    "ARIZONA",
    "OREGON",
    "NEVADA",
    "COLORADO",
    "UTAH",
    "MAINE",
    "IDAHO",
    "KANSAS",
    "IOWA",
    "ALABAMA",
    "MONTANA",
    "VERMONT",
    "INDIANA",
    "KENTUCKY",
]
US_SLOGANS = [
    "THE GOLDEN STATE",
    "EMPIRE STATE",
    "SUNSHINE STATE",
    "LAND OF LINCOLN",
    "GRAND CANYON STATE",
    "THE SILVER STATE",
    "LIFE ELEVATED",
    "DRIVE SAFELY",
    "VACATIONLAND",
    "PURE MICHIGAN",
    "THE EVERGREEN STATE",
    "LONE STAR STATE",
    "BIG SKY COUNTRY",
    "GREEN MOUNTAINS",
    "VISIT US",
]
CARRIERS_LATIN = [
    "SWIFTSHIP",
    "PARCELGO",
    "RAPIDPOST",
    "BOXLINE",
    "GLOBEX",
    "NORTHSTAR",
    "SKYPACK",
    "TRANSIT ONE",
    "QUICKDROP",
    "CARGOLINK",
    "METRO EXPRESS",
    "ORBITAL POST",
]
SERVICES = [
    "GROUND",
    "NEXT DAY AIR",
    "2ND DAY AIR",
    "EXPRESS",
    "PRIORITY",
    "ECONOMY",
    "STANDARD",
    "EXPRESS SAVER",
    "HOME DELIVERY",
    "INTL PRIORITY",
]
EU_COUNTRIES = [
    "D",
    "F",
    "I",
    "E",
    "NL",
    "B",
    "A",
    "PL",
    "P",
    "CZ",
    "SK",
    "H",
    "RO",
    "BG",
    "S",
    "FIN",
    "DK",
    "IRL",
    "LT",
    "LV",
    "EST",
    "SLO",
    "HR",
    "GR",
    "L",
]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
DIGITS = "0123456789"


def choice(rng: Rng, seq: list | str):
    return seq[int(rng.integers(len(seq)))]


def digits(rng: Rng, n: int) -> str:
    return "".join(choice(rng, DIGITS) for _ in range(n))


def letters(rng: Rng, n: int) -> str:
    return "".join(choice(rng, LETTERS) for _ in range(n))


def ko_name(rng: Rng) -> str:
    n = 2 if rng.random() < 0.9 else int(rng.integers(1, 4))
    return choice(rng, KO_SURNAMES) + "".join(choice(rng, KO_GIVEN) for _ in range(n))


def ko_address(rng: Rng, detail: bool = True) -> str:
    a = f"{choice(rng, KO_SIDO)} {choice(rng, KO_GU)} {choice(rng, KO_ROAD_A)}{choice(rng, KO_ROAD_B)} {int(rng.integers(1, 300))}"
    if rng.random() < 0.5:
        a += f"번길 {int(rng.integers(1, 80))}"
    if detail:
        a += f", {int(rng.integers(101, 120))}{choice(rng, KO_DONG)} {int(rng.integers(1, 25))}{int(rng.integers(1, 9)):02d}호"
    return a


def ko_phone(rng: Rng, masked: bool = False) -> str:
    mid = "****" if masked else digits(rng, 4)
    return f"010-{mid}-{digits(rng, 4)}"


def ko_rrn(rng: Rng, masked: bool = False) -> str:
    y, m, d = int(rng.integers(0, 100)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    tail = str(int(rng.integers(1, 5))) + ("******" if masked else digits(rng, 6))
    return f"{y:02d}{m:02d}{d:02d}-{tail}"


def ko_date(rng: Rng) -> str:
    return f"{int(rng.integers(2005, 2026))}. {int(rng.integers(1, 13))}. {int(rng.integers(1, 29))}."


def latin_name(rng: Rng) -> tuple[str, str]:
    last = "".join(choice(rng, LATIN_LAST_SYL) for _ in range(int(rng.integers(2, 4))))
    return choice(rng, LATIN_FIRST), last


def latin_address(rng: Rng) -> list[str]:
    return [
        f"{int(rng.integers(1, 9999))} {choice(rng, LATIN_STREETS)} {choice(rng, ['ST', 'AVE', 'RD', 'BLVD', 'LN', 'DR'])}",
        f"{choice(rng, LATIN_CITIES)} {choice(rng, US_STATES)} {digits(rng, 5)}",
    ]


def latin_date(rng: Rng) -> str:
    return f"{int(rng.integers(1, 29)):02d}.{int(rng.integers(1, 13)):02d}.{int(rng.integers(1950, 2035))}"


# ---------------------------------------------------------------- plate strings
def ko_plate_text(rng: Rng, kind: str) -> str:
    """Korean plate number. kind: 'new7', 'new8', 'commercial', 'rental'."""
    if kind == "commercial":
        return f"{digits(rng, 2)}{choice(rng, KO_PLATE_COMMERCIAL)}{digits(rng, 4)}"
    if kind == "rental":
        return f"{digits(rng, int(rng.integers(2, 4)))}{choice(rng, KO_PLATE_RENTAL)}{digits(rng, 4)}"
    n = 3 if kind == "new8" else 2
    return f"{digits(rng, n)}{choice(rng, KO_PLATE_PRIVATE)}{digits(rng, 4)}"


def eu_plate_text(rng: Rng, country: str) -> str:
    if country == "D":
        return f"{letters(rng, int(rng.integers(1, 4)))} {letters(rng, int(rng.integers(1, 3)))} {digits(rng, int(rng.integers(1, 5)))}"
    if country == "F":
        return f"{letters(rng, 2)}-{digits(rng, 3)}-{letters(rng, 2)}"
    if country == "I":
        return f"{letters(rng, 2)} {digits(rng, 3)}{letters(rng, 2)}"
    if country == "E":
        return f"{digits(rng, 4)} {''.join(choice(rng, 'BCDFGHJKLMNPRSTVWXYZ') for _ in range(3))}"
    if country == "NL":
        return f"{digits(rng, 2)}-{letters(rng, 3)}-{digits(rng, 1)}"
    if country == "PL":
        return f"{letters(rng, 2)} {digits(rng, 5)}"
    if country == "GB":
        return f"{letters(rng, 2)}{digits(rng, 2)} {letters(rng, 3)}"
    fmts = [
        lambda: f"{letters(rng, 2)} {digits(rng, 3)} {letters(rng, 2)}",
        lambda: f"{letters(rng, 3)}-{digits(rng, 3)}",
        lambda: f"{letters(rng, 2)}-{digits(rng, 4)}",
        lambda: f"{digits(rng, 3)} {letters(rng, 3)}",
        lambda: f"{letters(rng, 1)} {digits(rng, 4)} {letters(rng, 2)}",
    ]
    return fmts[int(rng.integers(len(fmts)))]()


def us_plate_text(rng: Rng) -> str:
    fmts = [
        lambda: f"{digits(rng, 1)}{letters(rng, 3)}{digits(rng, 3)}",
        lambda: f"{letters(rng, 3)} {digits(rng, 4)}",
        lambda: f"{letters(rng, 3)}-{digits(rng, 4)}",
        lambda: f"{digits(rng, 3)} {letters(rng, 3)}",
        lambda: f"{letters(rng, 2)}{digits(rng, 1)} {letters(rng, 1)}{digits(rng, 2)}",
        lambda: f"{digits(rng, 2)}{letters(rng, 1)} {digits(rng, 3)}",
    ]
    return fmts[int(rng.integers(len(fmts)))]()


def other_plate_text(rng: Rng) -> str:
    fmts = [
        lambda: f"{letters(rng, 3)}{digits(rng, 1)}{letters(rng, 1)}{digits(rng, 2)}",  # Mercosur
        lambda: f"{letters(rng, 3)}-{digits(rng, 4)}",
        lambda: f"{digits(rng, 2)}-{digits(rng, 2)}",
        lambda: f"{letters(rng, 2)} {digits(rng, 2)} {letters(rng, 2)} {digits(rng, 4)}",  # India-like
        lambda: f"{letters(rng, 1)}{digits(rng, 5)}",
    ]
    return fmts[int(rng.integers(len(fmts)))]()


def tracking_number(rng: Rng) -> str:
    style = int(rng.integers(4))
    if style == 0:
        return f"1Z {letters(rng, 3)} {digits(rng, 3)} {digits(rng, 2)} {digits(rng, 4)} {digits(rng, 4)}"
    if style == 1:
        return f"{digits(rng, 4)} {digits(rng, 4)} {digits(rng, 4)}"
    if style == 2:
        return f"{digits(rng, 4)}-{digits(rng, 4)}-{digits(rng, 4)}"
    return f"{letters(rng, 2)}{digits(rng, 9)}{letters(rng, 2)}"
