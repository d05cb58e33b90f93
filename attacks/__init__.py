"""The ranking-attack zoo (RobRank's suite), one algorithm per file, registered under paper acronyms."""
