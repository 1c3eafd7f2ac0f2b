"""An audit's findings for people and programs: the JSON/CSV document (``document``) and the
terminal table (``table``, which alone imports rich). Nothing is re-exported.
"""
