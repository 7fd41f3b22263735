"""Solvers for BING's stages: a class-balanced L2-loss linear SVM and logistic fits (1-D, weighted multi-D)."""
from __future__ import annotations

import numpy as np


def svm_l2(x: np.ndarray, y: np.ndarray, c: float, iters: int = 50) -> np.ndarray:
    """Class-balanced L2-loss linear SVM by primal Newton (Keerthi & DeCoste 2005).

    Minimizes ``c/2 |w|^2 + sum_i a_i max(0, 1 - y_i (w.x_i + b))^2`` with weights ``a_i``
    summing to 1/2 per class; returns ``[w, b]``.
    """
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = np.where(y > 0, 0.5 / max((y > 0).sum(), 1), 0.5 / max((y < 0).sum(), 1))
    reg = np.full(xb.shape[1], c)
    reg[-1] = 1e-8
    w = np.zeros(xb.shape[1])

    def objective(w):
        m = np.maximum(0, 1 - y * (xb @ w))
        return 0.5 * (reg * w) @ w + a @ (m * m)

    f = objective(w)
    for _ in range(iters):
        act = y * (xb @ w) < 1
        xa, ya, aa = xb[act], y[act], a[act]
        grad = reg * w + 2 * xa.T @ (aa * (xa @ w - ya))
        hess = np.diag(reg) + 2 * (xa.T * aa) @ xa
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and objective(w - t * step) > f - 1e-4 * t * grad @ step:
            t /= 2
        w_new = w - t * step
        f_new = objective(w_new)
        if f - f_new < 1e-10 * max(1.0, abs(f)):
            return w_new if f_new < f else w
        w, f = w_new, f_new
    return w


def logistic_1d(s: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 50) -> np.ndarray:
    """``(v, t)`` of a ridge-regularized logistic fit ``P(y) = sigmoid(v s + t)`` (Newton)."""
    if len(s) == 0:
        return np.array([0.0, -10.0], np.float32)
    mu, sd = s.mean(), s.std() + 1e-12
    z = np.stack([(s - mu) / sd, np.ones_like(s)], axis=1)
    yy = y.astype(np.float64)
    th = np.zeros(2)
    n = len(s)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ th, -50, 50)))
        grad = z.T @ (p - yy) / n + ridge * th
        hess = (z.T * (p * (1 - p))) @ z / n + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        th -= step
        if np.abs(step).max() < 1e-8:
            break
    v = th[0] / sd
    return np.array([v, th[1] - v * mu], np.float32)


def logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Weights ``[w, b]`` of a ridge-regularized weighted logistic fit ``P(y) = sigmoid(x.w + b)``
    (Newton; sample weights normalized to sum 1, the bias not regularized)."""
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = np.asarray(weight, np.float64) / max(float(np.sum(weight)), 1e-12)
    yy = np.asarray(y, np.float64)
    reg = np.full(z.shape[1], ridge)
    reg[-1] = 1e-8
    th = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ th, -50, 50)))
        grad = z.T @ (a * (p - yy)) + reg * th
        hess = (z.T * (a * p * (1 - p))) @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        th -= step
        if np.abs(step).max() < 1e-8:
            break
    return th
