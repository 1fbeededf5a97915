"""Finding the rule the player means: hybrid ranking of a game's passages.

``embedder`` turns text into vectors with a static embedding model shipped inside the
``wordllama`` wheel (nothing downloaded); ``index`` keeps each game's passages and
their vectors in memory, rebuilt when the game's documents change; ``ranking`` holds
the pure rules (reciprocal rank fusion, the glossary, errata precedence, the
relevance floor).
"""
