"""Built-in ``calculator``: arithmetic through a whitelisting AST evaluator (no eval, no attribute access)."""
from __future__ import annotations

import ast
import math
import operator

from fmoe.tools.decorator import tool

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 4096          # ints larger than ~1233 decimal digits are refused
MAX_EXPONENT = 10_000        # |exponent| of ** (the result size is checked too)
MAX_DEPTH = 50               # nesting of the expression tree

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}


def _round(x, ndigits=None):
    return round(x) if ndigits is None else round(x, int(ndigits))


def _log(x, base=None):
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "log": _log, "ln": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "abs": abs, "round": _round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
    "hypot": math.hypot, "degrees": math.degrees, "radians": math.radians,
}


class CalculatorError(ValueError):
    pass


def _check_int(x):
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise CalculatorError("result too large")
    return x


def _pow(base, exp):
    if isinstance(exp, (int, float)) and abs(exp) > MAX_EXPONENT:
        raise CalculatorError(f"exponent too large (|exponent| > {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0:
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exp > MAX_INT_BITS:
            raise CalculatorError("result too large")
    try:
        result = operator.pow(base, exp)
    except OverflowError:
        raise CalculatorError("result too large") from None
    if isinstance(result, complex):
        raise CalculatorError("the result is a complex number")
    return _check_int(result)


def _eval(node: ast.AST, depth: int = 0):
    if depth > MAX_DEPTH:
        raise CalculatorError("expression too deeply nested")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _check_int(node.value)
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        if op is ast.BitXor:
            raise CalculatorError("'^' is not supported: use ** for powers")
        if op not in _BINOPS:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if op is ast.Pow:
            return _pow(left, right)
        if op is ast.Mult and isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise CalculatorError("result too large")
        return _check_int(_BINOPS[op](left, right))
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r} (allowed: {', '.join([*_CONSTANTS, *_FUNCTIONS])})")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else "this call"
            raise CalculatorError(f"function {what!r} is not allowed (allowed: {', '.join(_FUNCTIONS)})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError("keyword or starred arguments are not allowed")
        args = [_eval(a, depth + 1) for a in node.args]
        try:
            return _check_int(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError) as e:
            raise CalculatorError(f"{node.func.id}(): {e}") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")


def format_number(x) -> str:
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.15g}"


def evaluate(expression: str):
    """Evaluate an arithmetic expression safely; raise CalculatorError (a ValueError) if it is not allowed."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression too long ({len(expression)} > {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"invalid expression: {e.msg}") from None
    try:
        return _eval(tree)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except RecursionError:
        raise CalculatorError("expression too deeply nested") from None


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Supports numbers, + - * / // % ** and parentheses, the constants pi and e, and the functions sqrt, sin, cos,
    tan, log, log10, log2, exp, abs, round, min, max, floor and ceil.

    Args:
        expression: The expression, e.g. "(3 + 4) * 2 ** 0.5".
    """
    return format_number(evaluate(expression))
