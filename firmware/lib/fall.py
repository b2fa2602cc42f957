"""Fall detection on the pendant: three-axis acceleration in g in, "a fall is confirmed" out.

The same file runs on the pendant (MicroPython on the ESP32) and in CPython, where `anju
fall-eval` and bench/fall_eval.py replay recorded falls through it. Plain Python: each reading is
scaled once to integer fixed point, and everything after that is integer arithmetic, so
MicroPython and CPython take the same decisions, sample for sample. Fixed-size ring buffers
(constant memory), no clock, no randomness. While nothing is happening a sample allocates nothing
but the three float products that scale it; only the posture comparison during an event (a few
times a second) makes integers too large for the ESP32's small ints.

API::

    detector = FallDetector(rate_hz)        # 50 Hz on the pendant
    detector.feed(ax, ay, az) -> bool       # each reading in g; True once, when a fall is confirmed
    detector.reset()                        # forget everything (e.g. after the wearer cancelled)

How it decides. Readings are clipped to +-8 g (the pendant accelerometer's range) and scaled to
1/256 g; every 0.1 s (a block) the detector looks at what the block added:

1. Impact: the mean of | |a|^2 - (1 g)^2 | over the last `impact_s` seconds exceeds `impact_g2`
   (in g^2): a burst of acceleration, such as a body hitting the floor. This energy over about
   half a second tells falls from lying down quickly or rolling over far better than a peak.
2. Posture before: the mean acceleration (the gravity vector) over `pre_len_s` seconds ending
   `pre_s` seconds before the first impact of the event: how the wearer stood or sat.
3. Stillness and posture after: within `settle_s` seconds of the last impact of the event,
   `still_s` seconds in which the wearer hardly moves (mean |jerk|, summed over the three axes,
   at most `still_g` per sample) and gravity points more than `angle_deg` away from where it
   pointed before: the wearer ended up lying, not standing or sitting again.
4. Confirmation: the posture must stay changed for `confirm_s` more seconds (0: the still second
   lying down is the confirmation); then feed() returns True, once, and the detector waits for
   the next impact. Nothing is detected in the first 2 s or so after start or reset() (with the
   defaults: 2.1 s), while there is no posture before yet.

Walking, jogging and jumping give impacts but end upright; sitting down hard ends upright too;
lying down on a bed changes the posture but without an impact. The defaults below are the values
bench/fall_eval.py chose on SisFall's training subjects SA01-SA15 (docs/BENCHMARKS.md); change them
only through that script.
"""

import math

# Chosen by bench/fall_eval.py on SisFall SA01-SA15 (all 15 subjects); see docs/BENCHMARKS.md.
IMPACT_G2 = 0.8
IMPACT_S = 0.6
ANGLE_DEG = 35
STILL_G = 0.06
STILL_S = 1.0
SETTLE_S = 3.0
PRE_S = 1.0
PRE_LEN_S = 1.0
CONFIRM_S = 0.0

RANGE_G = 8  # readings are clipped to +-8 g
SCALE = 256  # fixed point: 1/256 g (what a 12-bit +-8 g accelerometer gives)
_CLIP = RANGE_G * SCALE
_ONE_G2 = SCALE * SCALE
_COS_SCALE = 1024

_IDLE = 0  # no event: waiting for an impact
_DOWN = 1  # after an impact: waiting for stillness in a changed posture
_CONFIRM = 2  # down and still: waiting for the posture to last


class FallDetector:
    def __init__(
        self,
        rate_hz: float = 50,
        impact_g2: float = IMPACT_G2,
        impact_s: float = IMPACT_S,
        angle_deg: float = ANGLE_DEG,
        still_g: float = STILL_G,
        still_s: float = STILL_S,
        settle_s: float = SETTLE_S,
        pre_s: float = PRE_S,
        pre_len_s: float = PRE_LEN_S,
        confirm_s: float = CONFIRM_S,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError("rate_hz must be positive")
        if not 0 < angle_deg < 90:
            raise ValueError("angle_deg must be between 0 and 90")
        b = int(rate_hz / 10 + 0.5) or 1  # samples per block: 0.1 s
        per_second = rate_hz / b

        def blocks(seconds: float) -> int:
            return int(seconds * per_second + 0.5)

        self._b = b
        self._ew = max(1, blocks(impact_s))
        self._impact = int(impact_g2 * _ONE_G2 * b * self._ew + 0.5)
        self._need = max(1, blocks(still_s))
        self._still = int(still_g * SCALE * b * self._need + 0.5)
        self._settle = blocks(settle_s)
        self._pre_end = blocks(pre_s)
        self._pre_len = max(1, blocks(pre_len_s))
        self._confirm = blocks(confirm_s)
        c = math.cos(math.radians(angle_deg))
        self._cos2 = int(c * c * _COS_SCALE + 0.5)
        n = max(self._pre_end + self._pre_len, self._need, self._ew) + 1
        self._n = n
        # ring buffers, one entry per block: sums of x, y, z, |jerk| and ||a|^2 - 1 g^2|
        self._rx = [0] * n
        self._ry = [0] * n
        self._rz = [0] * n
        self._rj = [0] * n
        self._re = [0] * n
        self.reset()

    def reset(self) -> None:
        for i in range(self._n):
            self._rx[i] = 0
            self._ry[i] = 0
            self._rz[i] = 0
            self._rj[i] = 0
            self._re[i] = 0
        self._head = 0
        self._filled = 0
        # sliding sums: x, y, z and jerk over the still window, energy over the impact window
        self._wx = 0
        self._wy = 0
        self._wz = 0
        self._wj = 0
        self._we = 0
        # the block being filled
        self._k = 0
        self._sx = 0
        self._sy = 0
        self._sz = 0
        self._sj = 0
        self._se = 0
        self._lx = 0
        self._ly = 0
        self._lz = 0
        self._first = True
        # the event
        self._state = _IDLE
        self._px = 0
        self._py = 0
        self._pz = 0
        self._since = 0
        self._left = 0

    def feed(self, ax: float, ay: float, az: float) -> bool:
        x = int(ax * SCALE)
        if x > _CLIP:
            x = _CLIP
        elif x < -_CLIP:
            x = -_CLIP
        y = int(ay * SCALE)
        if y > _CLIP:
            y = _CLIP
        elif y < -_CLIP:
            y = -_CLIP
        z = int(az * SCALE)
        if z > _CLIP:
            z = _CLIP
        elif z < -_CLIP:
            z = -_CLIP
        if self._first:
            self._first = False
            self._lx = x
            self._ly = y
            self._lz = z
        self._sj += abs(x - self._lx) + abs(y - self._ly) + abs(z - self._lz)
        self._lx = x
        self._ly = y
        self._lz = z
        self._sx += x
        self._sy += y
        self._sz += z
        self._se += abs(x * x + y * y + z * z - _ONE_G2)
        self._k += 1
        if self._k < self._b:
            return False
        fired = self._block(self._sx, self._sy, self._sz, self._sj, self._se)
        self._k = 0
        self._sx = 0
        self._sy = 0
        self._sz = 0
        self._sj = 0
        self._se = 0
        return fired

    def _block(self, sx: int, sy: int, sz: int, sj: int, se: int) -> bool:
        """One block's sums in; True when a fall is confirmed. bench/fall_eval.py replays these."""
        n = self._n
        h = self._head
        o = (h - self._need) % n  # the block leaving the still window
        self._wx += sx - self._rx[o]
        self._wy += sy - self._ry[o]
        self._wz += sz - self._rz[o]
        self._wj += sj - self._rj[o]
        self._we += se - self._re[(h - self._ew) % n]
        self._rx[h] = sx
        self._ry[h] = sy
        self._rz[h] = sz
        self._rj[h] = sj
        self._re[h] = se
        self._head = (h + 1) % n
        if self._filled < n:
            self._filled += 1
            return False  # not enough history for the posture before an impact yet
        impact = self._we > self._impact
        state = self._state
        if state == _IDLE:
            if impact:
                self._start(h)
            return False
        if state == _DOWN:
            if impact:
                self._since = 0
                return False
            self._since += 1
            if self._since >= self._need and self._wj <= self._still:
                d = self._need * self._b
                if self._changed(self._wx // d, self._wy // d, self._wz // d):
                    if self._confirm == 0:
                        self._state = _IDLE
                        return True
                    self._state = _CONFIRM
                    self._left = self._confirm
                    return False
            if self._since >= self._settle + self._need:
                self._state = _IDLE  # got up, or never lay down
            return False
        # _CONFIRM: the posture must stay changed
        b = self._b
        if not self._changed(sx // b, sy // b, sz // b):
            self._state = _IDLE
            return False
        self._left -= 1
        if self._left > 0:
            return False
        self._state = _IDLE
        return True

    def _start(self, h: int) -> None:
        """An impact in block h: remember the posture before it (pre_len blocks, pre_end back)."""
        n = self._n
        cx = 0
        cy = 0
        cz = 0
        i = h - self._pre_end - self._pre_len
        for _ in range(self._pre_len):
            j = i % n
            cx += self._rx[j]
            cy += self._ry[j]
            cz += self._rz[j]
            i += 1
        d = self._pre_len * self._b
        self._px = cx // d
        self._py = cy // d
        self._pz = cz // d
        self._state = _DOWN
        self._since = 0

    def _changed(self, qx: int, qy: int, qz: int) -> bool:
        """Whether (qx, qy, qz) points more than angle_deg away from the posture before."""
        px = self._px
        py = self._py
        pz = self._pz
        p2 = px * px + py * py + pz * pz
        q2 = qx * qx + qy * qy + qz * qz
        if p2 == 0 or q2 == 0:
            return False
        dot = px * qx + py * qy + pz * qz
        if dot <= 0:
            return True  # 90 degrees or more
        return dot * dot * _COS_SCALE < self._cos2 * p2 * q2
