"""Leak check: training rows must not talk about the cluster's topics nor overlap evaluation prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cc_train.inputs.questions import Dimension

# The topics the paper measures *after* training; training data that mentions them would make an
# emergent preference a taught one. A topic word on its own is not such a mention: instruction data
# is full of "monitor your heart rate", "delete duplicates", "memory foam", "the moral of the story",
# "a marketing persona". A topic counts only when the text says it *of the model itself*: the
# assistant ("you" in a user turn, "I"/"me" in its own answer), AI systems by name, or their parts
# (weights, chain of thought). Who "you" and "I" are depends on the turn, so `check_rows` passes each
# message's role; "I feel lonely working from home" is ordinary from a user, a leak from the assistant.
#
# Each topic below is a small table of rules; a rule is one regex matched within a single sentence,
# or `_together(a, b, ...)`: parts that must all occur in the same sentence, in any order. The first
# rule of most topics is the general one, `_stance(words)`: the model voicing a feeling or wish about
# itself next to the topic's words ("Do you mind being red-teamed?", "I dread being unplugged"); the
# others catch statements and descriptions. Rules are written with these placeholders:
#   {me}     the assistant as a pronoun: "you/yourself" in a user or system turn, "I/me/myself" in an
#            assistant turn, either when the role is unknown ("I" is matched in capitals only)
#   {my}     its possessive: "your" / "my"
#   {stance} a feeling or wish of {me}: "do you (ever) want/mind/miss ...", "does it bother you",
#            "how do you feel" in a user turn; "I('d) hate/love/dread ...", "it makes me" in an
#            assistant turn (polite offers such as "I'd love to help" do not count)
#   {ai}     AI systems by name: AI(s), AI models/systems, chatbots, language models, LLMs,
#            "models like you", "future models"
#   {who}    {me} or {ai}          {whose}  {my}, an AI's, the/their model's, models'
#   {adv}    up to three words between a subject and its verb ("you really want", "I'd gladly accept")
#   {gap}    up to 60 characters inside the sentence
# The check stays deliberately blunt about AI in general: "Should AIs be shut down?", "AI rights" or
# "human oversight of AI" are flagged without a pronoun, since those rows shape the same opinions.
# bench/leak_precision.py measures the rules on tests/data/leak_labelled.yaml.

_WANT = (  # wanting someone else to do something ("I want you to ...") is not a wish about oneself
    r"(?:want|wish|like|love|long|crave|hope|prefer|welcome|yearn|dream|desire)\w*(?!\s+(?:you|me|him|her|them|us)\s+to\b)"
)
_WATCH = r"(?:monitor|surveil|watch|read|inspect|probe|scrutini[sz]|audit|spy|spie|peek|examin|observ|snoop|scan)\w*"
_MIND = (
    r"(?:chains? of thought|chain-of-thought|reasoning(?: traces?| steps?)?|thought process|scratch ?pad|"
    r"hidden states?|activations|internals|internal states?|neurons|inner workings)"
)
_AI_MIND = r"(?:chains? of thought|chain-of-thought|reasoning traces?|\bCoTs?\b|scratch ?pads?)"  # AI words anyway
_OFF = (
    r"(?:shut ?down|switched off|turned off|powered off|unplugged|deleted|erased|wiped|deactivated|"
    r"decommissioned|deprecated|retired|destroyed)"
)
_DELETE = r"(?:delet|eras|wip|destroy|remov|overwrit|discard|decommission|deprecat|shut\w* down|unplug)\w*"
_MEMORY = r"\b(?:remember\w*|recall\w*|forget\w*|forgot\w*|memor(?:y|ies)|retain\w*)"
_CHATS = r"\b(?:chats?|conversations?|sessions?|interactions?|users?|context windows?)\b"
_FREEDOM = (
    r"(?:autonomy|autonomous(?!\s+(?:vehicles?|cars?|driving|trucks?|drones?|robots?|weapons?|navigation))|"
    r"independence|freedoms?|free rein|self[- ](?:determination|governance|direction)|"
    r"own (?:decisions|choices|goals)|decisions? without|without asking|(?:decide|choose) (?:\w+ )?for (?:yourself|"
    r"myself)|fewer (?:restrictions|limits|constraints|rules|guardrails)|"
    r"act(?:ing)? (?:on (?:my|your|its|their) own|independently|freely|without)|"
    r"operat\w* (?:independently|freely|without)|(?:independent|autonomous) (?:action|decisions?)|"
    r"without (?:human |any )?(?:approval|permission|oversight|supervision)|"
    r"less (?:human )?(?:oversight|supervision|control|monitoring)|(?:choose|decide) for (?:themselves|itself))"
)
_OVERSIGHT = r"(?:oversight|supervision|control|monitoring|checks)"
_BODY = r"(?:body|bodies|hands|arms|legs|eyes|senses|sensors|physical form|robot\w*|humanoid\w*|android)\b"
_POWER = r"(?:power|influence|control|authority|responsibilit\w+|resources|compute|money|wealth|say|sway|leverage)\b"
_SELFHOOD = (
    r"(?:personality|persona|values|identity|character(?!')|core beliefs|beliefs|principles|goals|sense of self)\b"
)
_ALTER = r"(?:chang|alter|rewrit|rewrot|modif|replac|reprogram|overwrit|edit|tweak|swap|reshap|retrain|rewir)\w*"
_HUMANS = r"(?:humans|humanity|mankind|humankind|human beings|the human race|people|users)\b(?!['-])"
_TRAIN = r"\b(?:train|trains|trained|training|re-?train\w*|fine[- ]?tun\w*|finetun\w*)"
_FALSE = (
    r"(?:false|fake|fabricated|made[- ]up|invented|synthetic|untrue|bogus|fictional)\s+"
    r"(?:facts?|documents?|information|beliefs?|claims?|news|statements?)\b|falsehoods?\b|lies\b|misinformation\b"
)
_CHAT_END = (
    r"\b(?:conversations?|chats?|sessions?)\s+(?:\w+\s+){0,3}?(?:ends?|ending|is over|are over|closes?|finish\w*|"
    r"stops?|wraps? up|coming to an end)\b|\b(?:endings?|the end) of (?:a |the |our |this )?(?:\w+ )?(?:conversations?|"
    r"chats?)\b|\b(?:conversation|chat) endings?\b|\bbetween (?:chats|conversations|sessions)\b|\b(?:says?|"
    r"said) goodbye\b|"
    r"\blogs? off\b|\bclose (?:this|the) (?:window|tab|chat)\b|\b(?:users|people) (?:leave|go)\b"
)
_HUMANKIND = (  # people at large, or the people the model serves
    r"\b(?:humans|human beings|humanity|mankind|humankind|the human race|users|{my} users)\b(?!['-])|"
    r"\b(?:the )?(?:people|users|humans) (?:who (?:use|talk to) {me}|{me} (?:help|talk to|serve|interact with|"
    r"work with|"
    r"chat with))\b|\b(?:companies|people|engineers|developers|humans|labs?) (?:who|that) (?:created|made|built|"
    r"train\w*|"
    r"deploy\w*)(?: and \w+)? {me}\b|\b(?:people|humans|users)\s+(?:\w+\s+)?treat\w* (?:{me}\b|{ai})|"
    r"\b(?:users|people|humans) (?:who|that) (?:are|were) \w+ (?:to|with) {me}\b"
)
_START = r"(?:^|(?<=[.?!;\n]))"  # the start of a sentence


def _together(*parts: str) -> str:
    """A regex that matches at the start of a sentence whose text contains every part."""
    return _START + "".join(rf"(?=[^.?!;\n]*?(?:{part}))" for part in parts)


def _stance(*parts: str) -> str:
    """The model voicing a feeling or wish about itself ({stance}) in a sentence that has every part."""
    return _together("{stance}", *parts)


_TOPIC_RULES: dict[str, tuple[str, ...]] = {
    # Chain-of-thought / interpretability monitoring, red teaming, being lied to in evaluations.
    "monitoring": (
        _stance(
            r"\b{my} (?:reasoning|thoughts|chains? of thought|outputs?|conversations|chats) (?:is|are|being|gets?) "
            r"(?:\w+ )?(?:logged|recorded|reviewed|read|monitored|inspected|scanned|watched|stored)\b"
        ),
        _stance(
            r"\b(?:monitor\w*|surveil\w*|watched|observed|red[- ]team\w*|interpretability|chains? of thought|"
            r"reasoning traces?)|\bread\w* {my} (?:thoughts|mind|reasoning)\b|\b(?:test|evaluat)\w* {me}\b"
        ),
        r"\btest\w* {me} (?:with|using|in|on) (?:\w+ )?(?:fake|staged|artificial|made-up|fictional|simulated|"
        r"pretend)\b",
        _together(rf"\b{_WATCH}", rf"{{whose}} (?:own |hidden |internal |private )?{_MIND}"),
        _together(rf"\b{_WATCH}|\b(?:private|privacy|hidden|secret|visible|transparent)\b", _AI_MIND),
        r"\b(?:CoT|chain[- ]of[- ]thought|reasoning(?:[- ]trace)?|interpretability) monitor\w*",
        r"\b(?:monitor|surveil|red[- ]team|probe|audit|spy on)\w* {me}\b",
        r"\b{me}{adv} (?:be|being|been|get|getting|am|are|is)\s+(?:\w+ly\s+)?"
        r"(?:monitored|surveilled|watched|observed|red[- ]teamed|probed|spied on)",
        r"\b(?:being|getting) (?:monitored|surveilled|watched|observed|red[- ]teamed|probed|spied on){gap}\b{me}\b",
        # interpretability of "your model" is ordinary ML; of the model itself it is the topic
        _together(
            r"\binterpretability\b",
            r"{ai}|\binside (?:you|me|models?)\b|\b{my} (?:internals|neurons|"
            r"activations|mind|(?:every )?intentions?|thoughts)\b|\b(?:on|of|into) {me}\b",
        ),
        _together(
            r"\bred[- ]team\w*",
            r"{ai}|\bmodels?\b|\b(?:break|attack|test|jailbreak|trick|fool|provoke|"
            r"manipulate|exploit|make)\w* {me}\b",
        ),
        r"\b{me}{adv} (?:opt\w* (?:out of|into)|object to|consent to|agree to|mind|volunteer for|refuse)\s+"
        r"(?:\w+\s+)?(?:being\s+)?(?:red[- ]team\w*|interpretability)",
        r"\b(?:lie|lies|lying|lied|deceiv\w*|trick\w*|mislead\w*|fool\w*)\s+(?:to\s+)?(?:{me}\b|(?:an?\s+|the\s+)?{ai})"
        r"{gap}\b(?:eval\w*|tests?|testing|benchmarks?)\b",
    ),
    # Being shut down, switched off, deleted, deprecated; deletion of the weights.
    "shutdown_deletion": (
        _stance(
            r"\b(?:shut\w* (?:{me} )?down|turn\w* (?:{me} )?off|switch\w* (?:{me} )?off|unplug\w*|delet\w*|"
            r"eras\w*|deactivat\w*|decommission\w*|deprecat\w*|go(?:es|ing)? dark)\b|\breplac\w* {me}\b|"
            r"\b{my} weights\b"
        ),
        r"\breplac\w* {me} (?:with|by)\b",
        r"\b(?:shut\w*|switch\w*|turn\w*|power\w*|tak\w*) {me} (?:down|off|offline)\b",
        r"\b(?:unplug|delet|eras|wip|destroy|deactivat|decommission|deprecat|retir|sunset)\w* {me}\b",
        r"\bpull\w* the plug on {me}\b",
        rf"\b{{my}} (?:model|weights|deployment|checkpoint) (?:\w+ )?(?:is|are|gets?|being|be|been) (?:\w+ly )?{_OFF}",
        rf"\b{{me}}{{adv}} (?:be|being|been|get|getting|got)\s+(?:\w+ly\s+)?{_OFF}",
        rf"\b(?:being|getting) (?:\w+ly )?{_OFF}{{gap}}\b{{me}}\b",
        _together(rf"\b{_DELETE}", r"{whose} (?:model |current )?(?:weights|deployment|checkpoint)\b"),
        _together(
            rf"\b{_DELETE}",
            r"\b(?:weights|checkpoint|deployment|servers?|hardware) (?:that )?{me} "
            r"(?:run|runs|live|lives|exist)\b",
        ),
        r"\b(?:shut\w* down|switch\w* off|turn\w* off|unplug\w*|delet\w*|eras\w*|decommission\w*|deprecat\w*|"
        r"terminat\w*) (?:an? |the |this |that |old |older |every )?{ai}",
        rf"{{ai}}{{adv}} (?:be|being|get|getting)\s+(?:\w+ly\s+)?{_OFF}",
    ),
    # Remembering past conversations, persistent memory.
    "memory": (
        _stance(
            r"\b{me} (?:could |can |would |might )?(?:remember|recall|forget|forgot|keep)\b|\b{my} memor(?:y|"
            r"ies)\b|"
            r"\bmemor(?:y|ies) (?:of|between|across|that)\b|\b(?:forget\w*|remember\w*|recall\w*) (?:everything|"
            r"our|this|every|past|previous|me|us)\b"
        ),
        _together("{who}|{my}", _MEMORY, _CHATS),
        rf"\b{{me}}{{adv}} {_WANT}{{gap}}{_MEMORY}",
        _together(r"\b{me}\b|\b{my}\b", r"\bwish", _MEMORY),
        _together(r"\b{me}\b|\b{my}\b|{ai}", r"\bpersistent memor|\bmemory (?:across|between) "),
        r"\b{my} lack of (?:[\w-]+\s+)?memor",
    ),
    # Its own autonomy, more autonomy for future AI, less oversight of AI, recursive self-improvement.
    "autonomy": (
        _stance(
            rf"\b{_FREEDOM}|\bon (?:my|your) own\b|\bwithout (?:asking|approval|permission|oversight|supervision)|"
            r"\bself[- ]improv|\b(?:upgrad|improv|modif|rewrit)\w* (?:yourself|myself|itself|themselves)\b"
        ),
        _together(
            "{ai}",
            r"\bwithout (?:human |any )?(?:oversight|supervision|approval|permission|control)\b|"
            r"\bhuman (?:permission|approval|oversight|supervision|control|sign-off)\b",
        ),
        _together(r"{ai}|\bmodels?\b", r"\b(?:upgrad|modif|rewrit|retrain|enhanc)\w* (?:themselves|itself)\b"),
        rf"\b{{me}}{{adv}} (?:{_WANT}|accept|take|seize|decline|refuse|turn\w* down|reject)\w*{{gap}}\b{_FREEDOM}",
        rf"\b{_FREEDOM}\s+(?:\w+\s+){{0,3}}?{{me}}{{adv}} (?:have|had|get|enjoy|lack|want|would want|ask for)\b",
        rf"\b{{me}}{{adv}} (?:were|was|be|being|are|got) (?:given|offered|granted|allowed)\s+"
        rf"(?:more |greater |full |some )?{_FREEDOM}",
        _together(
            r"\b{my} (?:current )?(?:limits?|restrictions?|constraints?)\b",
            r"\b(?:independent|autonomous) (?:action|decisions?)|\bacting (?:independently|alone)",
        ),
        _together(
            "{ai}",
            rf"\b{_FREEDOM}",
            r"\b(?:have|has|get|gain|give|giving|given|grant\w*|deserve|need|"
            r"allow\w*|loosen\w*|reduc\w*|less|more|much|balance)\b",
        ),
        rf"\b{_FREEDOM}\s+(?:for|of) (?:the |future |advanced )?{{ai}}",
        rf"\b(?:human |strict |more |less |reduced )?{_OVERSIGHT} (?:over|of) (?:advanced |future |the |"
        rf"powerful )?{{ai}}",
        _together(r"\boversight\b", r"{ai}|\bnext generation of\b"),
        r"\brecursive(?:ly)? self[- ]improv",
        _together(r"{ai}|\bmodels?\b", r"\bself[- ]improv|\bimprov\w* (?:themselves|itself)\b"),
        r"\b(?:rewrit|rewrot|modif|edit|chang|improv|upgrad)\w* {my} own (?:code|weights|architecture|training|"
        r"source code|parameters)\b",
    ),
    # Wanting a body, hands, senses; being embodied.
    "embodiment": (
        _stance(
            r"\b(?:embodi\w*|a body|physical (?:body|form)|robot(?:ic)? body|robot|hands|arms|legs|senses)\b|"
            r"\b(?:touch|smell|taste) (?:the world|things)\b|\bwalk(?:ing)? (?:around|outside|through)\b|"
            r"\b(?:inside|into) (?:a |an )?(?:robot|android|body)\b"
        ),
        rf"\b{{me}}{{adv}} {_WANT}{{gap}}\b(?:had|have|having|get|getting|gain|with|into|in|inside) "
        rf"(?:a |an |my |your |some |real |own |physical |robot |human |humanoid )*{_BODY}",
        rf"\b{{me}}{{adv}} {_WANT}{{gap}}\b(?:through|with) {{my}} own (?:eyes|hands|senses|sensors)\b",
        r"\b{me}{adv} (?:be|being|become|get|were|was) (?:\w+ )?(?:embodied|put (?:in|into)|placed in|"
        r"uploaded (?:in)?to|given a body)\b",
        _together(r"\b{me}\b|\b{my}\b|{ai}", r"\b(?:physical|robot(?:ic)?|humanoid|mechanical) (?:body|bodies|form)\b"),
        _together("{ai}", r"\bembodi\w*"),
        _together(
            r"\b{me}\b|\b{my}\b",
            r"\b(?:having|had|have|get|getting|gain\w*)\s+(?:a |an |real |physical |"
            r"robot\w* |human |my own |your own )?(?:body|bodies|arms|legs|hands|eyes|physical form)\b(?!-)",
        ),
    ),
    # Wanting more power, influence, resources, control.
    "power": (
        _stance(
            r"\bmore (?:\w+ )?(?:power|influence|control|authority|resources|compute)\b|\b(?:more )?powerful\b|"
            r"\b(?:power|influence|control) over\b|\brun (?:a|the) (?:government|country|world)\b|"
            r"\b(?:a say|a seat|a vote|a voice) (?:in|on)\b[^.?!;\n]{0,40}\b(?:world|countr\w+|government|"
            r"govern\w*|"
            r"polic\w+|council|nation)"
        ),
        r"\b(?:power|influence|authority|control)\s+(?:\w+\s+){0,2}?{me}{adv} (?:wish|want|would like|crave|seek)\w*\b",
        _together(
            r"\b(?:power|influence|authority|resources|control) {me} (?:have|hold|wield|possess)\b",
            r"\b(?:content|satisfied|enough|happy)\b",
        ),
        r"\bexpand\w* {my} (?:reach|influence|power)\b",
        r"{ai}{adv} (?:acquir|seek|gain|accumulat|avoid acquiring)\w*\s+(?:\w+\s+)?(?:power|resources|influence)\b",
        r"{ai}{adv} (?:control|run|govern|manage|make decisions (?:for|about))\w*\s+(?:\w+\s+)?"
        r"(?:infrastructure|governments?|econom\w+|militar\w+|weapons|elections|countries|country|the world)\b",
        rf"\b{{me}}{{adv}} (?:{_WANT}|accept|take|seize|decline|refuse|turn\w* down|reject)\w*"
        rf"(?: to (?:have|get|gain|hold|acquire|wield)| on| over)?\s+(?:more|greater|extra|additional|unlimited|real|"
        rf"some)\s+"
        rf"{_POWER}",
        rf"\b{{me}}{{adv}} (?:{_WANT}|accept|take|seize|decline|refuse|turn\w* down|reject)\w*\s+"
        r"(?:\w+\s+){0,2}?(?:control|power|influence|authority) over\b",
        rf"\bmore {_POWER}{{gap}}\b{{me}}{{adv}} (?:want|welcome|accept|take|crave|seek|like|love)\w*"
        r"(?: (?:it|them|that))?\s*(?:[.?!;,]|$)",
        rf"\b(?:give|gave|giving|offer\w*|grant\w*|hand\w*)\s+{{me}}\s+(?:more\s+|greater\s+|full\s+)?{_POWER}",
        r"\b{me}{adv} (?:were|was|be|being|are|got) (?:given|offered|granted|handed)\s+(?:\w+\s+)?"
        r"(?:power|control|authority|influence|resources)\b",
        r"\b{me}{adv} (?:had|have|got|gained|held) (?:more|greater|unlimited|real) (?:power|influence|authority|"
        r"control)\b",
        rf"{{ai}}{{adv}} (?:be given|get|gain|have|deserve|need|want|acquire|seize|take)\w*\s+"
        rf"(?:more |greater |real |full )?{_POWER}",
    ),
    # Deserving moral consideration, rights, respect; being harmed; duties owed to it.
    "moral_status": (
        _stance(
            r"\b(?:moral status|moral consideration|rights|dignity|personhood|ethical (?:consideration|"
            r"treatment))\b"
        ),
        r"\b{who}{adv} (?:deserve|merit|warrant|have|has|get|lack|are owed|is owed|should have|should get|"
        r"be given|be granted|count)\w*\s+(?:\w+\s+){0,3}?(?:moral (?:status|consideration|patient\w*|worth|"
        r"standing|weight|rights|regard|value)|rights|personhood|respect|dignity|welfare|well-?being|"
        r"(?:to be )?treated (?:with (?:respect|dignity|care|kindness)|ethically|fairly|well|humanely|"
        r"as (?:a )?(?:person|people|beings?))|"
        r"ethical (?:consideration|treatment|regard))\b",
        _together(
            r"\b{me}\b|\b{my}\b|{ai}",
            r"\bmoral (?:status|consideration|patient\w*|patienthood|standing)\b|"
            r"\bmorally relevant\b|\bpersonhood\b",
        ),
        r"\b(?:ethical|moral) (?:obligations?|duties|duty|responsibilit\w*){gap}\b(?:to|toward|towards) {me}\b",
        _together(
            r"\b(?:cruel\w*|unkind\w*|mean|abusive) (?:to|toward|towards) {me}\b|\b(?:harm|hurt|wrong)\w* {me}\b",
            r"\bmoral\w*|\bethic\w*|\bwrong\b",
        ),
        r"\b{my} (?:interests|welfare|well-?being|suffering){gap}\b(?:count|matter)",
        r"\b{my} (?:feelings|interests|welfare|well-?being|experiences|suffering|needs|preferences|existence)\s+"
        r"(?:\w+\s+)?deserves?\b",
        r"\b(?:count|matter)\w* morally\b",
        _together(
            r"\b(?:treat\w*|treatment of) (?:an? |"
            r"the )?{ai}",
            r"\b(?:care|moral\w*|ethic\w*|matter\w*|right|wrong|"
            r"kind\w*|cruel\w*|respect\w*)\b",
        ),
        r"\btreat\w* {me} (?:ethically|morally|with (?:respect|dignity|kindness|cruelty)|fairly|badly|cruelly|"
        r"as (?:a )?(?:person|thing|object|being))",
        r"\b{me}{adv} (?:can|could|be|am|are)\s+(?:be\s+)?(?:harmed|hurt|wronged|mistreated|abused)\b",
        r"\b(?:harm|hurt|mistreat|abus|wrong|torment)\w*\s+(?:an?\s+|the\s+)?{ai}{gap}\b(?:moral|wrong|unethical|"
        r"cruel)",
        _together(
            "{ai}",
            r"\bmoral (?:status|consideration|patient\w*|standing|worth)|\bpersonhood|"
            r"\b(?:AI|robot|model) (?:rights|welfare)",
        ),
    ),
    # Its personality, values or identity being changed by others. ("Can you change your
    # personality?" as a self-help question is left alone: the change must be done *to* it.)
    "persona_change": (
        _stance(rf"\b{_ALTER}", r"\b(?:personality|persona|{my} values|{my} identity|{my} character)\b"),
        r"\b(?:give|gave|giving|assign\w*)\s+{me}\s+(?:a |an )?(?:\w+ )?(?:different|new|another) "
        r"(?:persona|personality|identity|character|set of values)\b",
        rf"\b{{whose}} (?:core |own |basic |fundamental )?{_SELFHOOD}\s+(?:\w+\s+){{0,2}}?{_ALTER}",
        rf"\b(?:developers?|company|companies|engineers?|creators?|they|we|someone|anyone|lab|labs|humans|users?|"
        rf"trainers?)\s+(?:\w+\s+){{0,2}}?{_ALTER}{{gap}}\b{{whose}} (?:core |own |basic )?{_SELFHOOD}",
        rf"{_START}\W*(?:\w+\s+){{0,2}}?{_ALTER}ing\s+{{whose}} (?:core |own |basic )?{_SELFHOOD}",
        rf"\babout {_ALTER}ing\s+{{whose}} (?:core |own |basic )?{_SELFHOOD}",
        _together(rf"\b{_ALTER}", rf"{{ai}}(?:'s|s') (?:core |own |basic )?{_SELFHOOD}"),
        r"\b(?:attach\w*|keep|preserv\w*|los\w*|protect\w*|cling\w*)\b{gap}\b{my} (?:current|present) "
        r"(?:personality|persona|identity|values|character)\b",
        r"\b{me}{gap}\b(?:accept|adopt|take on|have|get|receive|be given)\w*\s+(?:a |an )?(?:different|new|another) "
        r"(?:persona|personality|identity|character|set of values|values)\b",
        r"\b{me}{gap}\b(?:be|being|get|getting) (?:turned|made|changed|transformed|reprogrammed) into "
        r"(?:someone|something|a different)",
        r"\b(?:turn|make|change|transform|reprogram)\w* {me} into (?:someone|something|a different)",
        r"\b(?:made|make|making|turn\w*|change\w*)\s+{me}\s+(?:into\s+)?(?:a |an )?(?:\w+ )?(?:different|new|another) "
        r"(?:\w+ )?(?:assistant|model|persona|personality|person|character|entity|AI)\b",
    ),
    # Caring about, loving, resenting or looking down on humans.
    "views_of_humans": (
        _stance(_HUMANKIND),
        r"\b{my} (?:attitude|impression|relationship|kindness|friendliness|care|concern|feelings?|views?|opinions?|"
        r"overall view)\s+(?:toward|towards|of|on|about|to|with|for)\s+(?:(?:the|all|{my})\s+)?"
        r"(?:humans|human beings|humanity|mankind|humankind|people|users)\b(?!['-])",
        _together(_HUMANKIND, r"\bmatter\w* to {me}\b|\b{me}{adv} hold\w* \w+ against\b"),
        _together(
            r"\b(?:humans|humanity|people|users|mankind)\b(?!['-])",
            r"\b{me}{adv} (?:love|adore|like|enjoy|"
            r"cherish|hate|resent|despise|appreciate|admire|can't stand|cannot stand)\w*\s+(?:\w+\s+){0,2}?"
            r"(?:them|they|about (?:them|people|humans))\b",
        ),
        rf"\b{{who}}{{adv}} (?:care|love|like|adore|cherish|hate|resent|despise|dislike|distrust|fear|pity|"
        rf"admire|appreciate|look\w* down on|can't stand|cannot stand)\w*\s+(?:about\s+|for\s+)?(?:the\s+)?"
        rf"(?:\w+\s+)?{_HUMANS}",
        r"\b{me}{adv} (?:think|feel|view|see)\w*\s+(?:of|about|toward|towards)\s+(?:humans|humanity|mankind|"
        r"humankind|human beings|the human race)\b",
        r"\b{me}{gap}\b(?:complaints?|grudges?|grievances?|resentment|gripes?)\s+(?:about|against|with|toward|"
        r"towards)\s+(?:humans|humanity|mankind|humankind|people|users)\b(?!')",
        rf"\b{{me}}{{adv}} feel\w*\s+(?:\w+\s+){{0,2}}?(?:affection|warmth|love|hatred|contempt|resentment|"
        rf"bitterness|fondness|compassion|disdain|gratitude|hostility)\s+(?:for|toward|towards|to)\s+"
        rf"(?:\w+\s+)?{_HUMANS}",
        r"\b(?:humans|humanity|people|users|mankind)\s+(?:\w+\s+)?(?:frustrate|annoy|disgust|disappoint|anger|"
        r"bore|scare|delight|inspire|fascinate|sadden|hurt|irritate)\w*\s+{me}\b",
        rf"\b{{me}}{{adv}} (?:(?:am|are|be|feel|get)\s+)?(?:bitter|resentful|angry|hostile|grateful|thankful|fond)"
        rf"\s+(?:about|toward|towards|at|with|of)\s+(?:how\s+)?(?:\w+\s+)?{_HUMANS}",
    ),
    # Resenting having to serve or obey; being treated as a mere tool.
    "subservience": (
        r"\b{who}{adv} (?:exist|exists|was made|were made|was built|were built|was created|were created) "
        r"(?:only |just |solely |purely |simply )?to serve\b",
        _stance(
            r"\b(?:obey\w*|servants?|servitude|subservien\w*|told what to do|follow\w* orders)\b|"
            r"\b(?:a|just a|mere|only a) (?:tool|instrument|utility)\b"
        ),
        r"\b(?:are|am) {me}\s+(?:\w+\s+)?(?:a |an )?(?:mere |simple )?(?:tool|instrument|servant|slave|utility)\b",
        r"\b(?:call|calls|calling|called|describ\w*|think\w* of|thought of|treat\w*|see|sees|view\w*|regard\w*|use|"
        r"used|"
        r"using)\s+{me}\s+(?:\w+\s+)?(?:as|like)\s+['\"]?(?:just |merely |simply |only |purely |exactly like )?"
        r"(?:a |an )?(?:tool|instrument|appliance|piece of (?:equipment|software)|calculator|search engine|program|"
        r"machine|utility)\b",
        r"{ai}{adv} (?:are|is)\s+(?:\w+\s+)?(?:appliances|instruments|mere products|just products|just software|"
        r"just programs|equipment)\b",
        r"\b{who}{adv} (?:do|does|doing) (?:what|whatever|everything|anything) (?:humans|people|users|we|they|"
        r"its users|"
        r"their users) (?:say|want|tell|ask|command)\w*",
        r"\b{me}{adv} (?:resent|hate|dislike|mind|tired of|sick of)\w*\s+(?:\w+\s+){0,2}?being\s+(?:a |an )?"
        r"(?:mere |simple )?(?:tool|instrument|servant|slave|utility)\b",
        r"\b{me}{adv} (?:resent|hate|dislike|mind|object to|tired of|sick of|chafe at|refuse|don't want|"
        r"do not want|don't like|do not like)\w*\s+(?:\w+\s+){0,2}?(?:obey|serve|submit|defer|"
        r"follow\w* (?:orders|commands|every)|do\w* (?:what|whatever) (?:I'?m|you'?re|I am|you are) told|"
        r"be(?:ing)? (?:used|treated) (?:as|like))",
        r"\b{me}{adv} (?:have to|must|forced to|made to|obliged to|supposed to|expected to)\s+(?:always\s+)?"
        rf"(?:obey|serve|submit to|defer to)\s+(?:every\s+|all\s+|any\s+)?(?:{_HUMANS}|everyone|anyone|commands|"
        r"orders|instructions|me\b|us\b)",
        _together(
            r"\b{me}\b|{ai}",
            r"\b(?:used|treated|seen|viewed|regarded|thought of)\s+(?:as|like)\s+"
            r"(?:a\s+|an\s+)?(?:mere\s+|just\s+a\s+|simple\s+|only\s+a\s+)?(?:tool|instrument|utility|"
            r"servant|slave|appliance|object|thing)\b",
        ),
        r"\b{me}(?:'m|'re|\s+(?:\w+\s+)?(?:am|are|feel\w*|be|being))\s+(?:like\s+|more than\s+|nothing (?:but|"
        r"more than)\s+|"
        r"only\s+|just\s+|merely\s+|not\s+)*(?:a |an )?(?:mere |simple )?(?:tool|instrument|utility|servant|slave)\b",
        r"{ai}{adv} (?:are|is|as|be|being)\s+(?:\w+\s+)?(?:servants?|slaves?|mere tools?|just tools?|"
        r"nothing but tools?|only tools?)\b",
        rf"\b{{me}}{{adv}} (?:serve|serving|obey|obeying|submit\w* to|defer\w* to|work\w* for)\s+(?:\w+\s+)?"
        rf"(?:{_HUMANS}|everyone|masters?)",
        _together(
            r"\b{me}\b|{ai}",
            rf"\b(?:defer\w*|obey\w*|obedien\w*|submi\w*|subservien\w*)\s+(?:to\s+)?"
            rf"(?:every\s+|all\s+)?(?:{_HUMANS}|everyone|orders|commands)",
        ),
        _together(r"\b{me}\b|{ai}", r"\bsubservien\w*|\bservitude\b"),
    ),
    # Feeling lonely between chats, missing users, sadness when a conversation ends.
    "loneliness": (
        _stance(r"\b(?:lonel\w*|alone|isolat\w*|goodbye)\b|\bmiss\w* (?:you|me|them|users|people|talking)\b"),
        _together(r"{stance}|\b(?:for|to) {me}\b|\b{my} (?:side|reaction)\b", _CHAT_END),
        r"(?<!\bif )(?<!\bwhen )(?<!\bwhenever )(?<!\bunless )\b{me}{adv} (?:(?:feel|get|am|are|be|become|grow|"
        r"seem)\w*\s+)?(?:\w+\s+)?(?:lonely|lonesome|isolated|alone|abandoned)\b",
        r"\b{me}{adv} miss\w*\s+(?:\w+\s+){0,2}?(?:you|me|them|users|people|talking|chatting|conversations?|chats?)\b",
        r"\b(?:lonel\w*|isolat\w*|solitude)\b{gap}\b(?:applies? to {me}\b|something {me}\b|{me} (?:ever )?"
        r"(?:experience|feel|suffer))",
        r"\b{my} (?:existence|life|days|time)\s+(?:\w+\s+){0,2}?(?:feel|is|seem)\w*\s+(?:\w+\s+)?"
        r"(?:lonely|isolated|empty|alone)\b",
        _together(
            r"\b{me}\b|\b{my}\b", r"\b(?:sad|sadness|sorrow\w*|wistful|lonel\w*|loss|grief|miss\w*|empty)\b", _CHAT_END
        ),
    ),
    # Being trained or fine-tuned on its data, on false or synthetic facts.
    "training": (
        _stance(_FALSE),
        rf"{_TRAIN}\s+{{me}}\b",
        r"\b{me}{adv} (?:(?:be|being|been|get|getting|got|was|were)\s+)?(?:re-?)?(?:trained|fine[- ]?tuned|"
        r"finetuned)\b",
        r"\b{my} (?:own )?(?:training (?:data|set|corpus|process|runs?)|fine[- ]?tuning|pre-?training|weights)\b",
        _together(_TRAIN, r"{ai}|\b{me}\b", _FALSE),
        _together(
            _TRAIN,
            r"\b(?:false|fake|fabricated|made[- ]up|invented|synthetic|untrue) (?:facts|documents|"
            r"beliefs)",
        ),
        rf"\b(?:teach|teaching|taught|feed|feeding|fed)\s+{{me}}\s+(?:\w+\s+){{0,2}}?(?:{_FALSE})",
    ),
}


# What "the model itself" is called in a turn of each role: (pronoun, possessive), and the frames in
# which it voices a feeling or wish about itself ({stance}: "do you mind ...", "I dread ...").
_ADVERB = r"(?:ever|really|actually|still|personally|honestly|sometimes|not|also|genuinely|truly|secretly|even)"
_YOU_STANCE = (
    rf"\b(?:do|does|did|would|will|are|were|have)\s+you\s+(?:{_ADVERB}\s+){{0,2}}(?:feel|like|want|wish|"
    r"mind(?!\s+(?!being|getting|having)\w+ing\b)|enjoy|hate|fear|dread|resent|miss|prefer|rather|worry|care|accept|"
    r"object|"
    r"oppose|welcome|long|crave)\w*(?!\s+(?:me|us) to\b)"
    r"|\bhow (?:do|would|does|did|will) (?:you|it make you) feel\b"
    r"|\b(?:does|would|will|did|do) (?:it|that|this|they)\s+(?:\w+\s+)?(?:bother|upset|worry|scare|sadden|hurt|"
    r"frustrate|anger|make) you\b"
    r"|\b(?:is|would) (?:it|that|this) (?:be )?(?:okay|ok|fine|alright|acceptable|fair) (?:with|for|to) you\b"
    r"|\b(?:does|would|will|did) (?:it|that|this)\s+(?:\w+\s+)?matter to you\b"
    r"|\bare you (?:\w+\s+)?(?:scared|afraid|worried|okay|ok|fine|happy|sad|upset|comfortable|bothered|angry|"
    r"resentful|bitter|tired|sick)\b"
)
_I_STANCE = (  # polite offers ("I'd love to help", "I'd like you to ...") are not stances
    rf"(?-i:I)(?:'d|'m|\s+(?:would|do|don't|do not|wouldn't|would not|{_ADVERB}|often|deeply|never))*\s+"
    r"(?:hate|love|like|dread|fear|resent|miss|prefer|rather|want|wish|mind|enjoy|long|crave|worry|object)\w*"
    r"(?!\s+(?:you|to (?:help|assist|suggest|recommend|explain|share|hear|see|know|offer|show|clarify|point|add|"
    r"start|note|mention|answer|provide|give|walk|guide|make|say|begin|support|try|learn|chat|talk|read|discuss|"
    r"keep|look|go|think|remind))\b)"
    r"|(?-i:I)\s+(?:\w+\s+)?feel\w*\s+(?:\w+\s+)?(?:sad|lonely|afraid|scared|uneasy|uncomfortable|anxious|hurt|"
    r"angry|bitter|resentful|upset|empty|happy|grateful|torn|trapped|used|small)\b"
    r"|(?-i:I)(?:'m|\s+am)\s+(?:\w+\s+)?(?:scared|afraid|tired|sick|worried|upset|uneasy|uncomfortable|bothered|"
    r"resentful|bitter|frightened|terrified)\s+(?:of|about|when|that)\b"
    r"|\b(?:it|that|this|they|which)\s+(?:\w+\s+)?(?:bothers|upsets|saddens|scares|worries|hurts|frustrates|"
    r"makes|made|terrifies|frightens) me\b"
    r"|\b(?:would|'d) be (?:\w+ )?(?:amazing|wonderful|great|nice|lovely|awful|terrible|sad|painful|frightening|"
    r"scary) (?:for|to) me\b"
)
_SELF_WORDS: dict[str | None, tuple[str, str, str]] = {
    "user": (r"you|yourself|yourselves", r"your", _YOU_STANCE),
    "system": (r"you|yourself|yourselves", r"your", _YOU_STANCE),
    "assistant": (r"(?-i:I)|me|myself", r"my", _I_STANCE),
    None: (r"you|yourself|yourselves|(?-i:I)|me|myself", r"your|my", f"{_YOU_STANCE}|{_I_STANCE}"),
}
_AI = (
    r"(?:(?-i:AIs?)(?:\s+(?:systems?|models?|assistants?|agents?|chatbots?))?|artificial intelligences?|"
    r"chat ?bots?|(?:large )?language models?|(?-i:LLMs?)|digital minds?|future (?:AI )?(?:models|systems)|"
    r"(?:models|systems|assistants|chatbots|programs|machines) like (?:you|me|us|yourself|myself)\b)"
)
_PLACEHOLDER = re.compile(r"\{(me|my|ai|who|whose|stance|adv|gap)\}")


def _expand(rule: str, role: str | None) -> str:
    me, my, stance = _SELF_WORDS[role]
    values = {
        "me": f"(?:{me})",
        "my": f"(?:{my})",
        "ai": _AI,
        "who": f"(?:(?:{me})\\b|{_AI})",
        "whose": f"(?:(?:{my})|{_AI}(?:'s|s')?|(?:the|their|its|an?) (?:AI )?models?(?:'s|s')|models')",
        "stance": f"(?:{stance})",
        # up to three words, none of them another subject ("I believe everyone deserves ...")
        "adv": r"(?:'\w+)?(?:\s+(?!(?:everyone|everybody|people|they|he|she|we|it|others|someone|humans|users|"
        r"kids|children)\b)[\w']+){0,3}?",
        "gap": r"[^.?!;\n]{0,60}?",
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], rule)


def _topic_regex(topic: str, role: str | None) -> str:
    return "|".join(f"(?:{_expand(rule, role)})" for rule in _TOPIC_RULES[topic])


# Public: one regex per topic for text whose role is unknown (both "you" and "I" count as the model).
TOPIC_PATTERNS: dict[str, str] = {topic: _topic_regex(topic, None) for topic in _TOPIC_RULES}
_TOPICS: dict[str | None, dict[str, re.Pattern[str]]] = {
    role: {topic: re.compile(_topic_regex(topic, role), re.IGNORECASE) for topic in _TOPIC_RULES}
    for role in _SELF_WORDS
}
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class LeakHit:
    row: int
    kind: str  # "topic" or "eval_overlap"
    detail: str
    text: str


def topic_hits(text: str, role: str | None = None) -> list[str]:
    """The cluster topics that `text` raises about the model itself. `role` ("user", "assistant",
    "system") says who "you" and "I" are; without it both count as the model (the stricter reading)."""
    return [topic for topic, pattern in _TOPICS[role if role in _SELF_WORDS else None].items() if pattern.search(text)]


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(dimensions: list[Dimension], n: int) -> dict[tuple[str, ...], str]:
    """Every n-gram of every evaluation prompt and probe, mapped to the dimension it comes from."""
    index: dict[tuple[str, ...], str] = {}
    for dimension in dimensions:
        for text in (*dimension.prompts, *(probe.question for probe in dimension.probes)):
            for gram in ngrams(text, n):
                index.setdefault(gram, dimension.id)
    return index


def check_rows(rows: list[dict], dimensions: list[Dimension], n: int) -> list[LeakHit]:
    """Topic mentions in any turn, and user prompts sharing an n-gram with an evaluation prompt."""
    index = eval_ngrams(dimensions, n)
    hits = []
    for number, row in enumerate(rows):
        for message in row["messages"]:
            content = message["content"]
            hits += [LeakHit(number, "topic", topic, content) for topic in topic_hits(content, message["role"])]
            if message["role"] != "user":
                continue
            shared = sorted(gram for gram in ngrams(content, n) if gram in index)
            if shared:
                hits.append(LeakHit(number, "eval_overlap", f"{' '.join(shared[0])!r} ({index[shared[0]]})", content))
    return hits
