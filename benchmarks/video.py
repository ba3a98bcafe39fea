"""Videos end to end: a 1080p H.264 clip at 1 fps, against decoding every frame and against what a user writes today.

    python -m benchmarks.video --model PKG --checkpoint CKPT [--seconds 60] [--gop 30,250] [--rounds 3]

PKG: a model package exported with ``--faces`` (ViT-B int8 for figures worth quoting); CKPT: the checkpoint it was
exported from, for the PyTorch row (export extra). The clip (made once, in --workdir) is a slow pan over the rocket
photo at 1920x1080 with the astronaut's face drifting across it and sensor grain (so P-frames cost what a camera's
do), ``--seconds`` long at 30 fps, once per keyframe interval in ``--gop`` (30 frames is a phone's 1 s; 250 is
libx264's default). Systems, each in a fresh process (for its peak
RSS; imports and model loading happen before the clock starts), in a rotating order each round:

- ``decode all``: PyAV decoding every frame, nothing else (the cost sampling avoids);
- ``sampled decode``: ``VideoReader.frames(fps=1)``, frames to RGB arrays included;
- ``ours faces``: ``Detector.predict_video`` (faces, tracks, verdict): frames/s and the decode share
  (sampled decode time / this time);
- ``ours whole frames``: ``predict_video(faces=False)``;
- ``pyav + torch``: what a user writes today: a PyAV loop over every frame, one frame in 30 kept, the HF processor and
  ``ViTForImageClassification`` in PyTorch on each, one at a time.

Report: median seconds, sampled frames/s, peak RSS (MiB); the ratios sampled/all decode and torch/ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLIP_CHILD = r"""
import sys, av, numpy as np
from PIL import Image
from fastvit_detect.build import samples
path, seconds, gop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
photos = {p.name: p for p in samples.sample_photos()}
background = Image.open(photos["rocket.jpg"]).convert("RGB").resize((2400, 1400))
face = Image.open(photos["astronaut.png"]).convert("RGB").crop((150, 30, 300, 210)).resize((300, 360))
grain = np.random.default_rng(0).integers(-8, 9, size=(8, 1080, 1920, 3), dtype=np.int16)
with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast", "g": str(gop)})
    stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
    for index in range(30 * seconds):
        # A slow pan over the photo, the face drifting, and sensor grain: P-frames cost what a camera's do.
        left, top = index % 480, (index // 2) % 320
        scene = background.crop((left, top, left + 1920, top + 1080))
        scene.paste(face, (600 + index % 300, 300 + (index // 3) % 200))
        pixels = np.clip(np.asarray(scene, np.int16) + grain[index % 8], 0, 255).astype(np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
"""

SYSTEM_CHILD = r"""
import json, sys, time
system, clip, model, checkpoint, options = sys.argv[1:6]

def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

# Imports and model loading happen before the clock starts: the figure is the clip's work, on a warm process.
import av
frames, loaded = 0, 0.0
if system == "decode all":
    started = time.perf_counter()
    with av.open(clip) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = sum(1 for _ in container.decode(stream))
elif system == "sampled decode":
    from fastvit_detect.video import VideoReader
    started = time.perf_counter()
    with VideoReader(clip) as reader:
        frames = sum(1 for _ in reader.frames(fps=1.0))
elif system.startswith("ours"):
    from fastvit_detect import Detector
    begun = time.perf_counter()
    detector = Detector.load(model)
    if system == "ours faces":
        detector.face_detector
    loaded = time.perf_counter() - begun
    started = time.perf_counter()
    result = detector.predict_video(clip, faces=system == "ours faces", **json.loads(options))
    frames = len(result.frames)
elif system == "pyav + torch":
    import torch
    from transformers import AutoImageProcessor, ViTForImageClassification
    begun = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(checkpoint, use_fast=False)
    network = ViTForImageClassification.from_pretrained(checkpoint).eval()
    loaded = time.perf_counter() - begun
    started = time.perf_counter()
    with av.open(clip) as container, torch.inference_mode():
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        every = round(float(stream.average_rate))  # one frame a second
        for index, frame in enumerate(container.decode(stream)):
            if index % every == 0:
                network(**processor(frame.to_image(), return_tensors="pt")).logits.softmax(-1)
                frames += 1
print(json.dumps({"seconds": time.perf_counter() - started, "frames": frames, "load_s": loaded,
                  "peak_mib": peak_mib()}))
"""

SYSTEMS = ("decode all", "sampled decode", "ours faces", "ours whole frames", "pyav + torch")
RATIOS = (("sampled_over_all_decode", "sampled decode", "decode all"),
          ("decode_share_with_faces", "sampled decode", "ours faces"),
          ("torch_over_ours_whole_frames", "pyav + torch", "ours whole frames"),
          ("torch_over_ours_faces", "pyav + torch", "ours faces"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model package exported with --faces")
    parser.add_argument("--checkpoint", default=None, help="its checkpoint, for the PyTorch row (skipped without)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--gop", default="30,250", help="keyframe intervals in frames, one clip each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastvit-video-bench")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here too")
    parser.add_argument("--video-options", default="{}",
                        help='predict_video options for the "ours" systems, as JSON (e.g. {"batch_size": 8})')
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, a subset of: {', '.join(SYSTEMS)} (default all)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}")
    systems = [system for system in SYSTEMS if system in chosen and (system != "pyav + torch" or args.checkpoint)]
    report: dict[str, dict[str, dict[str, float]]] = {}
    for gop in (int(value) for value in args.gop.split(",")):
        clip = args.workdir / f"clip-{args.seconds}s-gop{gop}.mp4"
        if not clip.exists():
            print(f"making {clip} ...", flush=True)
            subprocess.run([sys.executable, "-c", CLIP_CHILD, str(clip), str(args.seconds), str(gop)], check=True)
        runs: dict[str, list[dict[str, float]]] = {system: [] for system in systems}
        for round_ in range(args.rounds):
            shift = round_ % len(systems)
            for system in systems[shift:] + systems[:shift]:
                done = subprocess.run([sys.executable, "-c", SYSTEM_CHILD, system, str(clip), args.model,
                                       args.checkpoint or "", args.video_options], check=True, capture_output=True,
                                      text=True)
                runs[system].append(json.loads(done.stdout.splitlines()[-1]))
                print(f"gop {gop} round {round_ + 1} {system:<20} {runs[system][-1]}", flush=True)
        figures = {system: {"seconds": statistics.median(run["seconds"] for run in measured),
                            "frames": measured[0]["frames"],
                            "peak_mib": max(run["peak_mib"] for run in measured)}
                   for system, measured in runs.items()}
        for entry in figures.values():
            entry["frames_per_s"] = entry["frames"] / entry["seconds"]
        ratios = {name: figures[numerator]["seconds"] / figures[denominator]["seconds"]
                  for name, numerator, denominator in RATIOS if numerator in figures and denominator in figures}
        report[f"gop {gop}"] = {**figures, "ratios": ratios}  # type: ignore[dict-item]
        print(f"\ngop {gop}: {'system':<20} {'median s':>9} {'frames/s':>9} {'peak MiB':>9}")
        for system, entry in figures.items():
            print(f"{'':9}{system:<20} {entry['seconds']:>9.2f} {entry['frames_per_s']:>9.2f} "
                  f"{entry['peak_mib']:>9.0f}")
        print("         " + ", ".join(f"{key} {value:.2f}" for key, value in ratios.items()) + "\n")
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
