"""World-knowledge graph from Wikipedia dumps: readers, CSR graph building, PageRank
pruning, tag taxonomy and BM25 + hierarchy sampling weights (issues 6-7).
"""
