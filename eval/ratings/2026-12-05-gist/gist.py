"""The 84th rating round's d: the shown five without near-paraphrases. Runs vhred.generate with the dedup key
coarsened from the words a reader sees to their gist (hedges and politeness words aside)."""
import re, sys
import vhred.candidates as cand

HEDGES = frozenset("oh well ah um sir madam please yeah yes ok sure".split())
SAME = [(r"\bthank you\b", "thanks"), (r"\bokay\b", "ok"), (r"\ba lot\b", ""), (r"\bvery much\b", ""), (r"\bi am\b", "i'm"),
        (r"\byou are\b", "you're"), (r"\bit is\b", "it's"), (r"\bthat is\b", "that's")]

def gist(text):
    key = cand.reply_key(text)
    for pat, rep in SAME:
        key = re.sub(pat, rep, key)
    words = key.split()
    core = [w for w in words if w not in HEDGES]
    return " ".join(core or words) or key

if __name__ == "__main__":
    from vhred.render import pretty
    cand.same_reply = lambda sp: (lambda ids: gist(pretty(sp.decode(ids))))
    import vhred.generate as gen
    gen.same_reply = cand.same_reply
    gen.main(sys.argv[1:])
