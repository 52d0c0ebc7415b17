"""A private PulseAudio server for tests: a virtual microphone we can speak into and a null sink we record.

Layout: `mic_feed` is a null sink whose monitor is the default source (what the app's microphone hears);
`speakers` is a null sink set as the default sink (where the app's replies go), recorded from its monitor.
`loop_speakers_into_mic` adds the echo of laptop speakers: a loopback from `speakers` into `mic_feed`.
PortAudio reaches it through ALSA's pulse plugin (Debian libasound2-plugins), as on a desktop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def available() -> str | None:
    """None when the harness can run, else why not."""
    for tool in ("pulseaudio", "pactl", "paplay", "parecord"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: pulseaudio, pulseaudio-utils)"
    return None


class PulseServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="specvoice-pulse-"))
        self.env = {
            **os.environ,
            "PULSE_RUNTIME_PATH": str(self.dir / "run"),
            "XDG_RUNTIME_DIR": str(self.dir / "xdg"),
            "HOME": str(self.dir / "home"),
            "PULSE_SERVER": f"unix:{self.dir / 'run' / 'native'}",
        }
        for sub in ("run", "xdg", "home"):
            (self.dir / sub).mkdir()
        self._saved_env: dict[str, str | None] = {}

    def _run(self, *cmd: str) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> PulseServer:
        self._run(
            "pulseaudio",
            "-n",
            "--daemonize=yes",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=yes",
            f"--log-target=file:{self.dir / 'pulse.log'}",
            "-L",
            "module-native-protocol-unix",
            "-L",
            "module-null-sink sink_name=mic_feed",
            "-L",
            "module-null-sink sink_name=speakers",
        )
        self._run("pactl", "set-default-source", "mic_feed.monitor")
        self._run("pactl", "set-default-sink", "speakers")
        return self

    def apply_env(self) -> None:
        """Point this process's PortAudio/ALSA at the private server (restored by stop())."""
        for key in ("PULSE_RUNTIME_PATH", "XDG_RUNTIME_DIR", "PULSE_SERVER"):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = self.env[key]

    def speak(self, wav: Path) -> subprocess.Popen:
        """Play a file into the virtual microphone (returns at once; wait() on the result)."""
        return subprocess.Popen(["paplay", "-d", "mic_feed", str(wav)], env=self.env)

    def record(self, wav: Path, rate: int = 22050) -> subprocess.Popen:
        """Record everything the app plays; terminate() the result to finish the file."""
        return subprocess.Popen(
            [
                "parecord",
                "-d",
                "speakers.monitor",
                f"--rate={rate}",
                "--channels=1",
                "--file-format=wav",
                str(wav),
            ],
            env=self.env,
        )

    def loop_speakers_into_mic(self, latency_ms: int = 60) -> str:
        """Mix what the app plays back into its microphone, as laptop speakers do (the echo): the
        `speakers` monitor plays into `mic_feed` at full volume. Returns the module id for unload()."""
        return self._run(
            "pactl",
            "load-module",
            "module-loopback",
            "source=speakers.monitor",
            "sink=mic_feed",
            f"latency_msec={latency_ms}",
            "source_dont_move=true",
            "sink_dont_move=true",
        ).strip()

    def unload(self, module_id: str) -> None:
        self._run("pactl", "unload-module", module_id)

    def streams(self) -> dict[str, list[str]]:
        """Playback (sink-inputs) and recording (source-outputs) streams open on the server right now."""
        return {
            kind: self._run("pactl", "list", "short", kind).splitlines()
            for kind in ("sink-inputs", "source-outputs")
        }

    def stop(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
