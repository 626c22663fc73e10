"""streamrl: learn a feed-ranking policy online from live event streams."""

__version__ = "0.1.0"
