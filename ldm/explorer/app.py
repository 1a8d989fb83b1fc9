"""The explorer's page (Gradio): the widgets and their wiring to :mod:`ldm.explorer.callbacks`.

Every callback catches the error the scripts would raise for bad input and shows its message in the page's error
line (``#error``); the app keeps running. Element ids (``#prompt``, ``#chips``, ``#ae-tokens``, ``#run``,
``#image-plain``, ``#image-ae``, ``#maps-plain``, ``#maps-ae``, ``#step``, ``#plot``, ``#summary``, ``#error``) are
stable for the browser test. The method picker (``#method``; its settings: ``#settings-<method>`` with ``#preset`` and
``#ae-<field>`` for A&E, ``#g-<method>-<field>`` for the others) chooses the method of the main pair of images
(``#image-ae`` shows its run); ``#compare`` ticks further methods, and ``#side-by-side`` shows every run of the seed
(``#compare-images``, ``#compare-maps``, ``#compare-plot``, ``#compare-summary``).
"""

from __future__ import annotations

import errno
import html
import logging
import socket
from typing import Any

from ldm.ae_flags import AE_FIELDS
from ldm.errors import UserError
from ldm.explorer import callbacks
from ldm.explorer.session import SAMPLERS, Explorer, Settings, repo_relative
from ldm.guidance import get_method

logger = logging.getLogger(__name__)

EXPECTED_ERRORS = (ValueError, FileNotFoundError, OSError)

HELP = """Type a prompt; click the words to excite (their chips); pick a guidance method (its settings are on the
right); **Run** samples the same seed without and with it, and with every method ticked under "Also run side by side".
Under each image: each excited word's attention map over it. The slider shows the maps at any step (its last
position: the final maps, as `--save_attention` draws them). "Side by side" shows every run of the seed."""


def error_html(err: BaseException | str) -> str:
    """The page's error line for an exception (its message, as the scripts print it) or a message."""
    if isinstance(err, BaseException) and not isinstance(err, EXPECTED_ERRORS):
        logger.error("explorer: unexpected error", exc_info=err)
    text = str(err) if not isinstance(err, KeyError) else str(err.args[0])
    return f'<div style="color:#b00020;font-weight:600;white-space:pre-wrap">Error: {html.escape(text)}</div>'


def _run_label(method: str) -> str:
    return f"Run without and with {get_method(method).title}"


def _number(value: Any, flag: str, kind: type = int) -> Any:
    if value is None or value == "":
        raise ValueError(f"{flag}: enter a number")
    return kind(value)


def build_app(explorer: Explorer, settings: Settings | None = None, prompt: str = "", display_size: int = 256) -> Any:
    """The ``gr.Blocks`` page over ``explorer`` (``settings``: the initial sampling settings)."""
    import gradio as gr

    settings = settings or Settings(H=explorer.default_size, W=explorer.default_size)
    fields0 = explorer.preset_fields(explorer.default_preset)
    first = callbacks.chip_view(explorer, prompt) if prompt else callbacks.ChipView([], [], "")
    placeholders = ", ".join(explorer.placeholders()) or "none"
    with gr.Blocks(title="Attend-and-Excite explorer", analytics_enabled=False) as demo:
        result_state = gr.State(None)
        gr.Markdown(f"## Attend-and-Excite explorer\nModel `{repo_relative(explorer.config_path)}` + "
                    f"`{repo_relative(explorer.ckpt_path)}`; "
                    f"placeholders: {placeholders}.\n\n{HELP}")  # fmt: skip
        with gr.Row():
            with gr.Column(scale=3):
                prompt_box = gr.Textbox(label="Prompt", value=prompt, elem_id="prompt")
                chips = gr.CheckboxGroup(label="Words of the prompt: click to excite  [positions, kind]",
                                         choices=first.choices, value=first.selected, elem_id="chips")  # fmt: skip
                tokens = gr.Textbox(label="--ae_tokens (what the chips select; you may also type words or "
                                    "1-based positions)", elem_id="ae-tokens")  # fmt: skip
                table = gr.Textbox(label="Token table (position: token)", value=first.table, interactive=False,
                                   elem_id="token-table")  # fmt: skip
                titles = [(get_method(m).title, m) for m in explorer.methods()]
                method = gr.Dropdown(titles, value="ae", label="Guidance method (--guidance); its settings are on "
                                     "the right", elem_id="method")  # fmt: skip
                others = gr.CheckboxGroup(titles, value=[], label="Also run side by side (the same seed, each with "
                                          "its settings)", elem_id="compare")  # fmt: skip
                run_button = gr.Button(_run_label("ae"), variant="primary", elem_id="run")
                error = gr.HTML("", elem_id="error")
            with gr.Column(scale=2):
                with gr.Accordion("Sampling", open=True):
                    steps = gr.Number(settings.steps, label="Steps (--ddim_steps)", precision=0, elem_id="steps")
                    scale = gr.Number(settings.scale, label="Guidance scale (--scale)", elem_id="scale")
                    seed = gr.Number(settings.seed, label="Seed (--seed)", precision=0, elem_id="seed")
                    sampler = gr.Radio(
                        list(SAMPLERS), value=settings.sampler, label="Sampler (--sampler)", elem_id="sampler"
                    )
                    with gr.Row():
                        height = gr.Number(settings.H, label="Height (--H)", precision=0, elem_id="height")
                        width = gr.Number(settings.W, label="Width (--W)", precision=0, elem_id="width")
                    eta = gr.Number(settings.eta, label="DDIM eta (--ddim_eta)", elem_id="eta")
                with gr.Accordion("Method settings (the --ae_<field> / --g_<field> flags)", open=False):
                    groups, method_boxes = {}, {}
                    with gr.Group(visible=True, elem_id="settings-ae") as groups["ae"]:
                        gr.Markdown("Attend-and-Excite")
                        preset = gr.Dropdown(list(explorer.presets), value=explorer.default_preset,
                                             label="Preset (--ae_config)", elem_id="preset")  # fmt: skip
                        boxes = [gr.Textbox(fields0[name], label=f"--ae_{name}", elem_id=f"ae-{name}")
                                 for name in AE_FIELDS]  # fmt: skip
                    for name in (m for m in explorer.methods() if m != "ae"):
                        with gr.Group(visible=False, elem_id=f"settings-{name}") as groups[name]:
                            gr.Markdown(get_method(name).title)
                            method_boxes[name] = {
                                field: gr.Textbox(value, label=f"--g_{field}", elem_id=f"g-{name}-{field}")
                                for field, value in explorer.method_fields(name).items()
                            }  # fmt: skip
                with gr.Accordion("Embeddings (--embedding_path)", open=False):
                    embedding = gr.File(label="Embeddings file (.pt, .bin, .safetensors)", type="filepath",
                                        elem_id="embedding")  # fmt: skip
                    embedding_status = gr.Markdown(f"Placeholders: {placeholders}")
        with gr.Row():
            with gr.Column():
                plain_image = gr.Image(label="Without A&E", type="pil", format="png", interactive=False,
                                       elem_id="image-plain")  # fmt: skip
                plain_maps = gr.Gallery(label="Attention per word, without A&E", columns=4, format="png", height=300,
                                        elem_id="maps-plain")  # fmt: skip
            with gr.Column():
                ae_image = gr.Image(label="With A&E", type="pil", format="png", interactive=False, elem_id="image-ae")
                ae_maps = gr.Gallery(
                    label="Attention per word, with A&E", columns=4, format="png", height=300, elem_id="maps-ae"
                )
        step = gr.Slider(0, 1, value=1, step=1, label="Step (0 = the first; the last position = the final maps)",
                         elem_id="step")  # fmt: skip
        caption = gr.Markdown(elem_id="step-caption")
        plot = gr.Image(label="A&E loss and max attention per step", type="pil", format="png", interactive=False,
                        elem_id="plot")  # fmt: skip
        summary = gr.Markdown(elem_id="summary")
        with gr.Accordion("Side by side: every run of the seed", open=True, elem_id="side-by-side"):
            compare_images = gr.Gallery(label="Images: without guidance, then each method", columns=6, format="png",
                                        height=220, elem_id="compare-images")  # fmt: skip
            compare_maps = gr.Gallery(label="Final maps per run and word", columns=8, format="png", height=240,
                                      elem_id="compare-maps")  # fmt: skip
            compare_plot = gr.Image(label="Attention loss and each method's own loss per step", type="pil",
                                    format="png", interactive=False, elem_id="compare-plot")  # fmt: skip
            compare_summary = gr.Markdown(elem_id="compare-summary")
        other_boxes = [(name, field, box) for name, fields in method_boxes.items() for field, box in fields.items()]

        def on_prompt(text: str, spec: str):
            try:
                view = callbacks.chip_view(explorer, text, spec)
            except Exception as err:  # noqa: BLE001 - shown in the page
                return gr.skip(), gr.skip(), error_html(err)
            return gr.update(choices=view.choices, value=view.selected), view.table, ""

        def on_chips(text: str, selected: list[str]):
            try:
                return callbacks.spec_from_chips(explorer, text, selected or []), ""
            except Exception as err:  # noqa: BLE001
                return gr.skip(), error_html(err)

        def on_tokens(text: str, spec: str):
            try:
                return gr.update(value=callbacks.chips_from_spec(explorer, text, spec)), ""
            except Exception as err:  # noqa: BLE001
                return gr.skip(), error_html(err)

        run_outputs = [result_state, plain_image, ae_image, plain_maps, ae_maps, step, caption, plot, summary, error,
                       compare_images, compare_maps, compare_plot, compare_summary]  # fmt: skip

        def on_run(text, spec, n_steps, cfg_scale, seed_value, sampler_name, h, w, eta_value, preset_name,
                   method_name, compared, *values, progress=gr.Progress()):  # fmt: skip  # noqa: B008 (Gradio's way)
            ae_values, rest = values[: len(AE_FIELDS)], values[len(AE_FIELDS) :]
            fields_by_method: dict[str, dict[str, str]] = {}
            for (name, field, _), value in zip(other_boxes, rest, strict=True):
                fields_by_method.setdefault(name, {})[field] = value
            try:
                run_settings = Settings(
                    _number(n_steps, "--ddim_steps"), _number(cfg_scale, "--scale", float),
                    _number(seed_value, "--seed"), sampler_name, _number(h, "--H"), _number(w, "--W"),
                    _number(eta_value, "--ddim_eta", float),
                )  # fmt: skip
                view = callbacks.run(
                    explorer, text, spec, run_settings, preset_name, dict(zip(AE_FIELDS, ae_values)), display_size,
                    progress=lambda fraction, desc: progress(fraction, desc=desc), method=method_name or "ae",
                    method_fields=fields_by_method, others=compared or [],
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001
                return {error: error_html(err)}
            return {
                result_state: view.result, plain_image: view.plain_image, ae_image: view.excited_image,
                plain_maps: view.step.plain_maps, ae_maps: view.step.excited_maps,
                step: gr.update(maximum=view.last_step, value=view.last_step), caption: view.step.caption,
                plot: view.plot, summary: view.summary, error: "", compare_images: view.compare_images,
                compare_maps: view.compare_maps, compare_plot: view.compare_plot,
                compare_summary: view.compare_summary,
            }  # fmt: skip

        def on_method(name: str):
            short = "A&E" if name == "ae" else get_method(name).title
            visible = [gr.update(visible=key == name) for key in groups]
            return [*visible, gr.update(value=_run_label(name)), gr.update(label=f"With {short}"),
                    gr.update(label=f"Attention per word, with {short}")]  # fmt: skip

        def on_step(result, index):
            if result is None:
                return gr.skip(), gr.skip(), gr.skip()
            view = callbacks.at_step(result, int(index or 0), display_size)
            return view.plain_maps, view.excited_maps, view.caption

        def on_preset(name: str):
            try:
                values = explorer.preset_fields(name)
            except Exception as err:  # noqa: BLE001
                return [gr.skip()] * len(boxes) + [error_html(err)]
            return [values[n] for n in AE_FIELDS] + [""]

        def on_embedding(path: str | None, text: str, spec: str):
            if not path:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            try:
                message = callbacks.load_embedding(explorer, path)
                view = callbacks.chip_view(explorer, text, spec)
            except Exception as err:  # noqa: BLE001
                return gr.skip(), gr.skip(), gr.skip(), error_html(err)
            return message, gr.update(choices=view.choices, value=view.selected), view.table, ""

        prompt_box.change(on_prompt, [prompt_box, tokens], [chips, table, error])
        chips.input(on_chips, [prompt_box, chips], [tokens, error])
        tokens.input(on_tokens, [prompt_box, tokens], [chips, error])
        settings_inputs = [steps, scale, seed, sampler, height, width, eta, preset, method, others, *boxes,
                           *(box for _, _, box in other_boxes)]  # fmt: skip
        run_button.click(on_run, [prompt_box, tokens, *settings_inputs], run_outputs)
        method.change(on_method, [method], [*groups.values(), run_button, ae_image, ae_maps])
        step.change(on_step, [result_state, step], [plain_maps, ae_maps, caption])
        preset.change(on_preset, [preset], [*boxes, error])
        embedding.upload(on_embedding, [embedding, prompt_box, tokens], [embedding_status, chips, table, error])
    return demo


def _bind(host: str, port: int) -> None:
    """Bind (and release) ``host:port`` as the server would (``SO_REUSEADDR``, as uvicorn sets): an ``OSError`` when
    another program listens there."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)


def free_port_near(host: str, port: int, tries: int = 50) -> int | None:
    """The first port after ``port`` that is free on ``host`` (None when ``tries`` ports are all taken)."""
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        try:
            _bind(host, candidate)
            return candidate
        except OSError:
            continue
    return None


def check_port(host: str, port: int) -> None:
    """Refuse, before the model loads, a ``--port`` that another program listens on (naming a free one), a port out
    of range and a ``--host`` this machine cannot listen on."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: give a port between 1 and 65535 (default 7860)")
    try:
        _bind(host, port)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror}); use 127.0.0.1") from err
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from err
        free = free_port_near(host, port)
        hint = f"use --port {free}" if free else "choose another --port"
        raise UserError(f"--port {port}: the port is in use on {host} (another program listens on it); {hint}") from err


def launch(demo: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> None:
    """Serve the page (one run at a time: the model is shared); blocks until interrupted. A port taken since
    :func:`check_port` is one :class:`UserError`."""
    if share:
        logger.warning("--share: the page gets a public gradio.live address; anyone with it can run the model")
    try:
        demo.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, share=share, show_error=True)
    except OSError as err:
        if port is None or "port" not in str(err).lower():
            raise
        free = free_port_near(host, port)
        hint = f"use --port {free}" if free else "choose another --port"
        raise UserError(f"--port {port}: the port is in use on {host} (another program listens on it); {hint}") from err
