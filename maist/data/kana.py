"""The one place that lists characters and class sets.

Every ETL layout's label is read as a JIS X 0208 code (``maist.data.etl``: ETL1/6/7's one-byte
JIS X 0201 codes are mapped to the JIS X 0208 code of the same character). Class sets are
written here as characters and compiled to those codes: ``ClassSet.jis_to_label``.
Hiragana sit in JIS row 4 (0x2421 ぁ … 0x2473 ん) and katakana in row 5 (0x2521 ァ … 0x2576 ヶ),
both in Unicode order; kanji go through EUC-JP.

Class sets (name: classes, what they are):

- ``hiragana71`` (71): the article's, 46 basic hiragana and 25 with (han)dakuten, no small
  kana, no ゐ ゑ; ETL9G's 71 hiragana.
- ``hiragana75`` (75): + small っ ゃ ゅ ょ: ETL8G's 75 hiragana.
- ``hiragana71_merged`` (71): hiragana71's classes, small kana counted as their large form.
- ``katakana46`` (46): ア … ン without ヰ ヱ (the modern basic set).
- ``katakana48`` (48): + ヰ ヱ. ETL1's "51 katakana" ("Specification of ETL-1", ETL1C_07 … 13)
  are the 51 places of the old kana table, where イ, エ (ya row) and ウ (wa row) come twice:
  48 characters. A ``katakana51`` therefore cannot be told apart by character (see
  ``class_set``).
- ``kanji881`` (881): ETL8G's kanji, the education kanji of 1948 (当用漢字別表) as the 1958
  学年別漢字配当表 assigns them to grades 1–6 (46/105/187/205/194/144).
- ``kanji2965`` (2,965): ETL9G's kanji, JIS X 0208 level 1 (rows 16–47, 0x3021 亜 … 0x4F53 腕).
- ``etl8g_all`` (956): kanji881 + hiragana75, every character of ETL8G (and ETL8B2).
- ``etl9g_all`` (3,036): kanji2965 + hiragana71, every character of ETL9G (and ETL9B).

Classes are ordered by JIS code (hiragana before katakana before kanji).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

from maist.errors import ConfigError

JIS_HIRAGANA_FIRST = 0x2421  # ぁ
JIS_HIRAGANA_LAST = 0x2473  # ん
UNICODE_HIRAGANA_FIRST = 0x3041  # ぁ
JIS_LEVEL1_FIRST, JIS_LEVEL1_LAST = 0x3021, 0x4F53  # 亜 … 腕: rows 16–47, 2,965 kanji

# The article's 71 classes, in kana-table (JIS) order.
HIRAGANA71 = (
    "あいうえおかがきぎくぐけげこごさざしじすずせぜそぞただちぢつづてでとど"
    "なにぬねのはばぱひびぴふぶぷへべぺほぼぽまみむめもやゆよらりるれろわをん"
)
# The small kana that ETL8G also holds (75 hiragana in all).
ETL8G_SMALL = "っゃゅょ"
# Every small hiragana and the large form it is merged into.
SMALL_TO_LARGE = {
    "ぁ": "あ",
    "ぃ": "い",
    "ぅ": "う",
    "ぇ": "え",
    "ぉ": "お",
    "っ": "つ",
    "ゃ": "や",
    "ゅ": "ゆ",
    "ょ": "よ",
    "ゎ": "わ",
}
# The 46 basic katakana (no ヰ ヱ, no voiced or small forms), and ETL1's two old ones.
KATAKANA46 = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲン"
KATAKANA_OLD = "ヰヱ"

# ETL8G's 881 kanji: the education kanji of 1948 (当用漢字別表), i.e. the 881 characters of
# the 学年別漢字配当表 in force 1961–1967 (grades 1–6: 46, 105, 187, 205, 194, 144), in JIS
# order. Source: ja.wikipedia "学年別漢字配当表 (1958-1967)", as transcribed in the PyPI
# package kanji-lists 0.2.0 (KYOIKU.SHOWA36, MIT). Checks (tests/test_kana.py): 881 distinct
# kanji, all JIS X 0208 level 1, the last 0x4F43 話, which is where AIST's ETL8B2 table
# (form_e8b.htm: ETL8B2C3 "4253 - 4F43") ends. It has 燈, not 灯 (灯 came with the 1977 list).
KANJI881 = (
    "愛悪圧安暗案以位囲委意易異移胃衣遺医育一壱印員因引飲院右雨運雲営栄永泳英衛液益駅"
    "円園延演遠塩央往応横王黄億屋恩温音下化仮何価加可夏家科果歌河火花荷課貨過我画芽賀"
    "会解回快改械海界絵開階貝外害各拡格確覚角革学楽額活株寒刊勧完官幹感慣歓漢管観間関"
    "館岸眼岩顔願喜器基寄希旗期機帰気汽季紀規記貴起技疑義議客逆久休宮急救求球究級給旧"
    "牛去居挙許漁魚京供競共協境強教橋興鏡業局曲極玉勤均禁近金銀九句区苦具空君訓群軍郡"
    "係兄型形敬景系経計軽芸欠決潔結血月件健兼券建憲検権犬研絹県見険験元原厳減現言限個"
    "古固己庫戸故湖五午後語誤護交候光公功効厚口向后孝工幸広康校構港皇耕考航行講鉱高号"
    "合告国穀黒今根混左差査再最妻才採済災祭細菜際在材罪財坂作昨策刷察殺雑三参山散産算"
    "蚕賛酸残仕使司史四士始姉子市師志思指支止死氏私糸紙至視詞詩試資歯事似児字寺持時次"
    "治示耳自辞式識七失室質実舎写社者謝車借釈弱主取守手種酒首受授需収周宗就州修拾秋終"
    "習衆週集住十従重宿祝出術述春準純順処初所暑書諸助女序除勝商唱小少承招昭消焼照省称"
    "章証象賞上乗場常情条状植織職色食信心新森深申真神臣親身進人仁図推水数世是制勢性成"
    "政整星晴正清生精聖声製西誠青静税席石積績責赤切接折設節説雪絶舌先千宣専川戦浅線船"
    "選銭前善然全祖素組創倉想早争相総草走送像増蔵造側則息測足速俗属族続卒存孫尊損村他"
    "多太打体対帯待態貸退隊代台大第題達谷単炭短団断男談知地池置築竹茶着中忠昼柱注虫著"
    "貯丁帳張朝町腸調長鳥直賃追通低停定底庭弟提程敵的適鉄典天展店転点伝田電徒登都努度"
    "土党冬刀島投東湯燈当等答統討頭働動同堂導童道銅得徳特毒独読届内南難二弐肉日入任認"
    "熱年念燃納能農波派破馬拝敗配倍買売博白麦畑八発判半反板版犯飯番否悲比皮肥費非飛備"
    "美鼻必筆百俵標氷票表評病秒品貧不付夫婦富布府父負武部風副復服福複仏物分奮粉文聞兵"
    "平陛米別変編辺返便勉弁保歩補墓母包報放方法豊暴望貿防北牧本妹毎末万満味未脈民務無"
    "名命明盟迷鳴綿面毛木目問門夜野役約薬訳油輸勇友有由遊夕予余預容曜様洋用葉要陽養欲"
    "浴来落利理里陸律率立略流留旅両料良量領力緑林臨輪類令例冷礼歴列練連路労老六録論和"
    "話"
)


def jis_to_char(code: int) -> str:
    """The character of one JIS X 0208 code (any row, via EUC-JP)."""
    if JIS_HIRAGANA_FIRST <= code <= JIS_HIRAGANA_LAST:
        return chr(UNICODE_HIRAGANA_FIRST + code - JIS_HIRAGANA_FIRST)
    try:
        return bytes([(code >> 8) | 0x80, (code & 0xFF) | 0x80]).decode("euc_jp")
    except UnicodeDecodeError:
        return f"<JIS {code:#06x}>"


def ascii_name(char: str) -> str:
    """A short ASCII name of one character, for trackers that allow ASCII names only: its Unicode
    name without the script, e.g. あ → ``a``, ぱ → ``pa``, ゃ → ``small_ya``, ア → ``a``, 亜 → ``u4e9c``."""
    try:
        name = unicodedata.name(char).lower()
    except (TypeError, ValueError):
        return "".join(f"u{ord(c):04x}" for c in str(char))
    if name.startswith("cjk unified ideograph-"):
        return "u" + name.rsplit("-", 1)[1]
    for script in ("hiragana letter ", "katakana letter "):
        name = name.removeprefix(script)
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


VOICED_MARKS = ("\u3099", "\u309a")  # combining dakuten ゛ and handakuten ゜ (Unicode decomposition)


def voiced_parts(char: str) -> tuple[str, int] | None:
    """A voiced form's base kana and mark, 0 for a dakuten and 1 for a handakuten (が → (か, 0),
    ぱ → (は, 1), ゔ → (う, 0), katakana alike); None for any other character."""
    parts = unicodedata.normalize("NFD", str(char))
    if len(parts) == 2 and parts[1] in VOICED_MARKS:
        return parts[0], VOICED_MARKS.index(parts[1])
    return None


def char_to_jis(char: str) -> int:
    """The JIS X 0208 code of one character."""
    raw = char.encode("euc_jp")
    if len(raw) != 2:
        raise ValueError(f"{char!r} has no two-byte JIS X 0208 code")
    return ((raw[0] & 0x7F) << 8) | (raw[1] & 0x7F)


def level1_kanji() -> str:
    """The 2,965 kanji of JIS X 0208 level 1 in code order (rows 16–47; row 47 ends at 0x4F53)."""
    codes = [(row << 8) | cell for row in range(0x30, 0x50) for cell in range(0x21, 0x7F)]
    return "".join(jis_to_char(c) for c in codes if c <= JIS_LEVEL1_LAST)


def _kana_order(chars) -> str:
    return "".join(sorted(set(chars), key=char_to_jis))


@dataclass(frozen=True)
class ClassSet:
    """A labelling: the class names, and which JIS codes map to which label."""

    name: str
    classes: tuple[str, ...]
    jis_to_label: dict[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, char: str) -> int:
        return self.jis_to_label[char_to_jis(char)]


def _plain(name: str, chars: str) -> ClassSet:
    classes = tuple(_kana_order(chars))
    return ClassSet(name, classes, {char_to_jis(c): i for i, c in enumerate(classes)})


def _merged(name: str) -> ClassSet:
    base = _plain(name, HIRAGANA71)
    mapping = dict(base.jis_to_label)
    for small, large in SMALL_TO_LARGE.items():
        mapping[char_to_jis(small)] = base.label_of(large)
    return ClassSet(name, base.classes, mapping)


_BUILDERS = {
    "hiragana71": lambda: _plain("hiragana71", HIRAGANA71),
    "hiragana75": lambda: _plain("hiragana75", HIRAGANA71 + ETL8G_SMALL),
    "hiragana71_merged": lambda: _merged("hiragana71_merged"),
    "katakana46": lambda: _plain("katakana46", KATAKANA46),
    "katakana48": lambda: _plain("katakana48", KATAKANA46 + KATAKANA_OLD),
    "kanji881": lambda: _plain("kanji881", KANJI881),
    "kanji2965": lambda: _plain("kanji2965", level1_kanji()),
    "etl8g_all": lambda: _plain("etl8g_all", KANJI881 + HIRAGANA71 + ETL8G_SMALL),
    "etl9g_all": lambda: _plain("etl9g_all", level1_kanji() + HIRAGANA71),
}
CLASS_SET_NAMES = tuple(_BUILDERS)
# Names that sound right but are not class sets here, and why.
_NOT_A_CLASS_SET = {
    "katakana51": "ETL1's 51 katakana are the 51 places of the old kana table, where イ, エ "
    "and ウ come twice: 48 characters, and records are labelled by character. "
    "Use katakana48 (or katakana46 without ヰ ヱ)",
}


@cache
def class_set(name: str) -> ClassSet:
    """Look up a class set by name (``CLASS_SET_NAMES``; the module docstring says what each is)."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        why = f"{_NOT_A_CLASS_SET[name]}; " if name in _NOT_A_CLASS_SET else ""
        raise ConfigError(f"unknown class set {name!r}; {why}choose one of {', '.join(CLASS_SET_NAMES)}") from None
