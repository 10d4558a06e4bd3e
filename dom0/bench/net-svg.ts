// net-svg: the network benchmark's plot — TPS against checkpoint interval, one line per
// mode (the shape of RemusDB's Figure 5.13). Plain SVG text, no dependencies; intervals are
// evenly spaced categories, the y axis starts at 0. The legend sits right of the plot and
// the image is as wide as its longest entry needs (text widths are estimated: no font is
// measured); entries that do not fit the plot's height go into further columns. Every
// figure is written with its data beside it (writeFigure: x.svg and x.json), so that a plot
// can be drawn again (`node dist/scripts/replot.js x.json`) without running the benchmark.
import * as fs from 'node:fs';

export interface Series {
  name: string;
  values: number[];
  color: string;
  dashed?: boolean;
}

const PLOT_W = 420,
  H = 400,
  L = 70,
  T = 30,
  B = 55;
const LEGEND_MIN = 150,
  SWATCH = 45,
  LEGEND_GAP = 10,
  ROW = 20;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
}

/**
 * Estimated width in px of `s` in a sans-serif font of `size` px: widths in em by character
 * class (DejaVu Sans/Liberation Sans, rounded up), so a label is never wider than estimated.
 */
export function textWidth(s: string, size: number): number {
  let em = 0;
  for (const c of s) {
    if (" ,.:;'!|ijl".includes(c)) em += 0.32;
    else if ('()[]{}frtI-/'.includes(c)) em += 0.42;
    else if ('mwMW%@'.includes(c)) em += 0.92;
    else if (c >= 'A' && c <= 'Z') em += 0.74;
    else em += 0.64;
  }
  return Math.ceil(em * size);
}

/** Writes an SVG and, beside it (same name, .json), the data it was drawn from. */
export function writeFigure(svgPath: string, svg: string, data: unknown): void {
  fs.writeFileSync(svgPath, svg);
  fs.writeFileSync(figureDataPath(svgPath), `${JSON.stringify(data, null, 1)}\n`);
}

export function figureDataPath(svgPath: string): string {
  return svgPath.replace(/(\.svg)?$/i, '.json');
}

function niceStep(max: number): number {
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? raw;
}

export function tpsPlot(title: string, intervalsMs: number[], series: Series[]): string {
  const plotW = PLOT_W,
    plotH = H - T - B;
  const rows = Math.max(1, Math.floor((plotH - 10) / ROW));
  const columns = Math.max(1, Math.ceil(series.length / rows));
  const colW = Math.max(...series.map((s) => SWATCH + textWidth(s.name, 12) + LEGEND_GAP), 0);
  const W = L + plotW + Math.max(LEGEND_MIN, columns * colW);
  const titleW = textWidth(title, 14);
  const titleX = titleW / 2 + 5 > L + plotW / 2 || L + plotW / 2 + titleW / 2 + 5 > W ? W / 2 : L + plotW / 2;
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  const step = niceStep(max * 1.1);
  const top = Math.ceil((max * 1.1) / step) * step;
  const r1 = (v: number): number => Math.round(v * 10) / 10;
  const x = (i: number): number =>
    r1(L + (intervalsMs.length === 1 ? plotW / 2 : (i * plotW) / (intervalsMs.length - 1)));
  const y = (v: number): number => r1(T + plotH - (v / top) * plotH);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${titleX}" y="18" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<line x1="${L}" y1="${T + plotH}" x2="${L + plotW}" y2="${T + plotH}" stroke="black"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${T + plotH}" stroke="black"/>`,
  ];
  for (let v = 0; v <= top + 1e-9; v += step) {
    out.push(
      `<line x1="${L}" y1="${y(v)}" x2="${L + plotW}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`,
    );
  }
  intervalsMs.forEach((ms, i) => out.push(`<text x="${x(i)}" y="${T + plotH + 18}" text-anchor="middle">${ms}</text>`));
  out.push(
    `<text x="${L + plotW / 2}" y="${H - 12}" text-anchor="middle">checkpoint interval (ms)</text>`,
    `<text x="18" y="${T + plotH / 2}" text-anchor="middle" transform="rotate(-90 18 ${T + plotH / 2})">TPS ` +
      `(pgbench)</text>`,
  );
  series.forEach((s, k) => {
    const pts = s.values
      .map((v, i) => (Number.isFinite(v) ? `${x(i)},${y(v)}` : null))
      .filter((p): p is string => p !== null);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${dash} points="${pts.join(' ')}"/>`);
    for (const p of pts) {
      const [px, py] = p.split(',');
      out.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${s.color}"/>`);
    }
    const ly = T + 10 + (k % rows) * ROW,
      lx = L + plotW + Math.floor(k / rows) * colW;
    out.push(
      `<line x1="${lx + 15}" y1="${ly}" x2="${lx + 40}" y2="${ly}" stroke="${s.color}" stroke-width="2"${dash}/>`,
      `<text x="${lx + SWATCH}" y="${ly + 4}">${esc(s.name)}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
