"""Stand-in generator families outside the dev families, for attribution checks (issue 19; numpy/scipy only).

No weights are downloaded and nothing is trained: each family is a fixed, randomly initialised network (its weights
drawn once from its own ``*_SEED``, never varied) that turns a real image into a "generated" one.  The families were
chosen a priori to leave the different kinds of trace the literature describes, not tuned on any attribution result:

* ``rdec`` (issue 19, ninth round; unchanged, same draws for a seed): a conv auto-decoder whose up-sampler is a
  stride-2 **transposed convolution** with random 4x4 kernels (DCGAN-like).  Trace: a strong period-2 phase pattern,
  peaks at the (N/2, N/2), (0, N/2), (N/2, 0) bins of the residual spectrum (Odena et al. 2016; Durall et al. 2020).
* ``nnconv``: a **resize-convolution** decoder (Odena et al. 2016's fix): 2x2-mean encoding to half size, a random 3x3
  conv bank with injected noise, **nearest-neighbour** x2 up-sampling, then three random 3x3 conv layers at full size.
  Nearest-neighbour up-sampling multiplies the spectrum by cos(w/2), which is zero at Nyquist, and the smoothing
  convolutions at full size blur the 2x2 blocks, so its period-2 trace is weak (measured on 100 dev-real inputs:
  periodic_peak 0.83 against the inputs' 0.39 and rdec's 3.63; ~0 on 64 px synthetic inputs) and its trace is a
  spectral deficit (Durall et al. 2020): little energy above half Nyquist (high_freq_fraction 0.0005 vs 0.0106).
* ``diff``: a **diffusion-like sampler** (DDIM, eta = 0): the real image is noised to alpha-bar 0.5 (noise SD = signal SD) and denoised
  back in ``DIFF_STEPS`` steps by a fixed denoiser (a Gaussian low-pass whose width follows the noise level plus a
  small random conv correction).  Full-resolution throughout, no up-sampling layer: low high-frequency energy, a
  mid-frequency grain (the noise the sampler carries), no periodic peak; the fingerprint is the denoiser's spectral shape (Corvi et al. 2023: diffusion models'
  traces are weak, mid-frequency, without the GANs' up-sampling peaks).
* ``vae``: a **VAE-like blurry decoder**: 4x4-mean encoding to a quarter size, a random conv bank, smooth (cubic spline)
  up-sampling, one random 3x3 conv, and a fixed per-model **intensity curve** (a monotone tone curve: gamma and
  S-curve drawn from the seed).  Trace: very little energy above a quarter of Nyquist, and a global grey-level mapping
  (Wang et al. 2020: a CNN detector keys on such global colour/contrast statistics as well as on spectra).

:func:`family_images` (name, real uint8 [M, H, W], n, seed) draws ``n`` inputs and noise per seed; H and W must be
multiples of 4.  :func:`periodic_peak` and :func:`high_freq_fraction` are the trace measurements the smoke test uses.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: The one set of rdec weights (the "model"); fixed a priori, never varied.
DECODER_SEED = 20261130
#: The other families' weight seeds (one model each; fixed a priori, never varied).
NNCONV_SEED = 20261201
DIFF_SEED = 20261202
VAE_SEED = 20261203
DIFF_STEPS = 10
CH = 8


def _conv3(x, w, b):
    """3x3 'same' convolution (reflect padding) of x [C,H,W] by w [O,C,3,3] plus b [O] -> [O,H,W]."""
    c, h, wd = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    sh = np.stack([p[:, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], axis=1)  # [C,9,H,W]
    return np.einsum("ock,ckhw->ohw", w.reshape(w.shape[0], c, 9), sh) + b[:, None, None]


def _lrelu(x):
    return np.where(x > 0, x, 0.2 * x)


def _standardise(image):
    x = image.astype(np.float64)
    mu, sd = x.mean(), x.std() + 1e-6
    return (x - mu) / sd, mu, sd


def _pool(s, f):
    """f x f block means of a 2-D array."""
    return s.reshape(s.shape[0] // f, f, s.shape[1] // f, f).mean(axis=(1, 3))


def _to_uint8(y, mu, sd):
    y = (y - y.mean()) / (y.std() + 1e-6) * sd + mu
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _encoder(r, ch):
    """A random 3x3 conv bank whose channel 0 carries the image itself."""
    w = r.normal(0, np.sqrt(2.0 / 9), (ch, 1, 3, 3))
    w[0] = 0.0
    w[0, 0, 1, 1] = 1.0
    return w, r.normal(0, 0.1, ch)


class RandomDecoder:
    """``rdec``: a randomly initialised conv encoder/decoder with a transposed-conv up-sampler (see the module notes);
    deterministic given its seed."""

    def __init__(self, seed=DECODER_SEED, ch=CH):
        r = np.random.default_rng(seed)
        he3 = np.sqrt(2.0 / (9 * ch))
        self.enc_w, self.enc_b = _encoder(r, ch)
        bil = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])  # bilinear x2 on a zero-inserted grid
        self.up_w = r.normal(0, 0.5 / 4, (ch, ch, 4, 4)) * 0.25
        for c in range(ch):
            self.up_w[c, c] += bil
        self.w1, self.b1 = r.normal(0, he3, (ch, ch, 3, 3)) * 0.3, r.normal(0, 0.05, ch)
        self.w2, self.b2 = r.normal(0, he3, (ch, ch, 3, 3)) * 0.3, r.normal(0, 0.05, ch)
        self.out_w = np.r_[1.0, r.normal(0, 0.15, ch - 1)]
        self.noise_w = r.normal(0, 0.5, ch)

    def _up(self, x):
        """Stride-2 transposed convolution, 4x4 kernels: zero insertion, then a 4x4 correlation per channel pair."""
        c, h, w = x.shape
        z = np.zeros((c, 2 * h + 3, 2 * w + 3))
        z[:, 2:2 * h + 2:2, 2:2 * w + 2:2] = x
        out = np.zeros((self.up_w.shape[0], 2 * h, 2 * w))
        for dy in range(4):
            for dx in range(4):
                out += np.einsum("oc,chw->ohw", self.up_w[:, :, dy, dx], z[:, dy:dy + 2 * h, dx:dx + 2 * w])
        return out

    def __call__(self, image, rng):
        s, mu, sd = _standardise(image)
        lo = _pool(s, 2)[None]  # encode: 2x2 means
        h = _conv3(lo, self.enc_w, self.enc_b)
        h[1:] = _lrelu(h[1:])
        h = h + self.noise_w[:, None, None] * rng.normal(0, 0.05, h.shape[1:])[None]  # injected noise
        u = self._up(h)
        u = u + _lrelu(_conv3(u, self.w1, self.b1))
        u = u + _conv3(_lrelu(u), self.w2, self.b2)
        y = np.einsum("c,chw->hw", self.out_w, u)
        return _to_uint8(y, mu, sd)


class ResizeConvDecoder:
    """``nnconv``: 2x2-mean encoding, a random conv bank with injected noise, nearest-neighbour x2 up-sampling and
    three random 3x3 conv layers at full size (resize-convolution)."""

    def __init__(self, seed=NNCONV_SEED, ch=CH):
        r = np.random.default_rng(seed)
        he3 = np.sqrt(2.0 / (9 * ch))
        self.enc_w, self.enc_b = _encoder(r, ch)
        self.noise_w = r.normal(0, 0.5, ch)
        self.layers = []
        for _ in range(3):
            w = r.normal(0, he3, (ch, ch, 3, 3)) * 0.3
            for c in range(ch):  # a smoothing identity path, as a trained refiner keeps the image
                w[c, c] += np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
            self.layers.append((w, r.normal(0, 0.05, ch)))
        self.out_w = np.r_[1.0, r.normal(0, 0.15, ch - 1)]

    def __call__(self, image, rng):
        s, mu, sd = _standardise(image)
        h = _conv3(_pool(s, 2)[None], self.enc_w, self.enc_b)
        h[1:] = _lrelu(h[1:])
        h = h + self.noise_w[:, None, None] * rng.normal(0, 0.05, h.shape[1:])[None]
        u = h.repeat(2, axis=1).repeat(2, axis=2)  # nearest-neighbour x2
        for w, b in self.layers:
            u = _conv3(u, w, b)
            u = np.concatenate([u[:1], _lrelu(u[1:])])
        return _to_uint8(np.einsum("c,chw->hw", self.out_w, u), mu, sd)


class DiffusionSampler:
    """``diff``: a DDIM (eta = 0) sampler from the real image noised to alpha-bar ``a_start`` back to alpha-bar 1,
    with a fixed denoiser: a Gaussian low-pass whose width grows with the noise level, plus a small random 3x3 conv
    correction (8 channels, leaky ReLU)."""

    def __init__(self, seed=DIFF_SEED, ch=CH, steps=DIFF_STEPS, a_start=0.5):
        r = np.random.default_rng(seed)
        self.w1, self.b1 = r.normal(0, np.sqrt(2.0 / 9), (ch, 1, 3, 3)), r.normal(0, 0.1, ch)
        self.w2 = r.normal(0, 0.1 / np.sqrt(ch), ch)
        self.abar = np.linspace(a_start, 1.0, steps + 1)  # noisiest first
        self.blur = 0.6 + 1.2 * r.random()  # the denoiser's base width, px (one draw: this model's)

    def _denoise(self, x, a):
        sigma_noise = np.sqrt((1 - a) / a)  # noise SD relative to the signal in x / sqrt(a)
        z = x / np.sqrt(a)
        x0 = ndimage.gaussian_filter(z, self.blur * (1.0 + sigma_noise), mode="reflect")
        h = _lrelu(_conv3(x0[None], self.w1, self.b1))
        return x0 + np.einsum("c,chw->hw", self.w2, h)

    def __call__(self, image, rng):
        s, mu, sd = _standardise(image)
        a = self.abar[0]
        x = np.sqrt(a) * s + np.sqrt(1 - a) * rng.normal(0, 1, s.shape)
        x0 = s
        for t in range(len(self.abar) - 1):
            a, a_next = self.abar[t], self.abar[t + 1]
            x0 = self._denoise(x, a)
            eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
            x = np.sqrt(a_next) * x0 + np.sqrt(max(1 - a_next, 0.0)) * eps
        return _to_uint8(x0, mu, sd)


class BlurryVAE:
    """``vae``: 4x4-mean encoding, a random conv bank with a latent noise sample, cubic-spline x4 up-sampling, one
    random 3x3 conv, and this model's monotone intensity curve."""

    def __init__(self, seed=VAE_SEED, ch=CH):
        r = np.random.default_rng(seed)
        self.enc_w, self.enc_b = _encoder(r, ch)
        self.noise_w = r.normal(0, 0.3, ch)
        self.dec_w = r.normal(0, np.sqrt(2.0 / (9 * ch)), (1, ch, 3, 3)) * 0.3
        self.dec_w[0, 0] += np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
        self.gamma = float(np.exp(r.normal(0, 0.3)))
        self.s_curve = float(r.uniform(0.2, 0.5))

    def curve(self, u):
        """The model's intensity curve on [0, 1] -> [0, 1]: gamma, then a blend with smoothstep (monotone)."""
        g = np.clip(u, 0, 1) ** self.gamma
        return (1 - self.s_curve) * g + self.s_curve * g * g * (3 - 2 * g)

    def __call__(self, image, rng):
        s, mu, sd = _standardise(image)
        h = _conv3(_pool(s, 4)[None], self.enc_w, self.enc_b)
        h[1:] = _lrelu(h[1:])
        h = h + self.noise_w[:, None, None] * rng.normal(0, 1.0, h.shape[1:])[None]  # the latent sample
        u = np.stack([ndimage.zoom(c, 4, order=3, mode="grid-mirror", grid_mode=True) for c in h])
        y = _conv3(u, self.dec_w, np.zeros(1))[0]
        y = _to_uint8(y, mu, sd).astype(np.float64) / 255.0
        return np.clip(np.rint(255.0 * self.curve(y)), 0, 255).astype(np.uint8)


FAMILIES = {"rdec": RandomDecoder, "nnconv": ResizeConvDecoder, "diff": DiffusionSampler, "vae": BlurryVAE}


def family_images(family, real, n, seed):
    """``n`` images of ``family`` from ``real`` (uint8 [M,H,W]), inputs drawn and noised by ``seed``; the model's
    weights are fixed.  ``family_images("rdec", ...)`` gives exactly the ninth round's rdec draws."""
    rng = np.random.default_rng(seed)
    model = FAMILIES[family]()
    idx = np.sort(rng.choice(len(real), n, replace=False))
    return np.stack([model(real[i], rng) for i in idx])


def high_freq_fraction(images, cut=0.5):
    """Mean share of each image's spectral power (DC removed) at radial frequency above ``cut`` x Nyquist."""
    x = images.astype(np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(x)) ** 2
    fy = np.fft.fftfreq(x.shape[1])[:, None]
    fx = np.fft.fftfreq(x.shape[2])[None, :]
    hi = np.sqrt(fy ** 2 + fx ** 2) > cut * 0.5
    return float(np.mean(p[:, hi].sum(axis=1) / p.sum(axis=(1, 2))))


def periodic_peak(images):
    """log10 of the mean residual power (image minus its 3x3 median) at the three period-2 bins (N/2, N/2), (0, N/2),
    (N/2, 0) over the median residual power at radial frequency above half Nyquist: ~0 without a period-2 trace."""
    x = images.astype(np.float64)
    res = x - ndimage.median_filter(x, size=(1, 3, 3), mode="reflect")
    p = (np.abs(np.fft.fft2(res)) ** 2).mean(axis=0)
    h, w = p.shape
    peak = (p[h // 2, w // 2] + p[0, w // 2] + p[h // 2, 0]) / 3
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    band = np.sqrt(fy ** 2 + fx ** 2) > 0.25
    return float(np.log10(peak / np.median(p[band])))

