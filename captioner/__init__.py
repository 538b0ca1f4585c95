"""VLM captioning: backends behind one TextGenBackend protocol, multi-level / OCR-first /
difference caption programs (issue 12).
"""
