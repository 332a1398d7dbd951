"""A denoiser session wrapper that records every feed (tests of what the engine sends the model)."""


class Recorder:
    def __init__(self, inner):
        self.inner, self.feeds = inner, []

    def run(self, names, feed):
        self.feeds.append({k: v.copy() for k, v in feed.items()})
        return self.inner.run(names, feed)
