"""Statistics, written in notebook 09: the 95% Wilson interval of a judged rate, the interval every faithfulness
figure of the course draws."""
import math


def wilson(p, n, z=1.96):
    """(low, high) for a rate p measured on n trials; it stays inside [0, 1] even at p = 0 or 1."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)
