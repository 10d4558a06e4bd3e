// net-svg: the network benchmark's plot — TPS against checkpoint interval, one line per
// mode (the shape of RemusDB's Figure 5.13). Plain SVG text, no dependencies; intervals are
// evenly spaced categories, the y axis starts at 0.

export interface Series { name: string; values: number[]; color: string; dashed?: boolean; }

const W = 640, H = 400, L = 70, R = 150, T = 30, B = 55;

function esc(s: string): string { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;'); }

function niceStep(max: number): number {
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? raw;
}

export function tpsPlot(title: string, intervalsMs: number[], series: Series[]): string {
  const plotW = W - L - R, plotH = H - T - B;
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  const step = niceStep(max * 1.1);
  const top = Math.ceil((max * 1.1) / step) * step;
  const r1 = (v: number): number => Math.round(v * 10) / 10;
  const x = (i: number): number => r1(L + (intervalsMs.length === 1 ? plotW / 2 : (i * plotW) / (intervalsMs.length - 1)));
  const y = (v: number): number => r1(T + plotH - (v / top) * plotH);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L + plotW / 2}" y="18" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<line x1="${L}" y1="${T + plotH}" x2="${L + plotW}" y2="${T + plotH}" stroke="black"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${T + plotH}" stroke="black"/>`,
  ];
  for (let v = 0; v <= top + 1e-9; v += step) {
    out.push(`<line x1="${L}" y1="${y(v)}" x2="${L + plotW}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v)}</text>`);
  }
  intervalsMs.forEach((ms, i) => out.push(`<text x="${x(i)}" y="${T + plotH + 18}" text-anchor="middle">${ms}</text>`));
  out.push(`<text x="${L + plotW / 2}" y="${H - 12}" text-anchor="middle">checkpoint interval (ms)</text>`,
    `<text x="18" y="${T + plotH / 2}" text-anchor="middle" transform="rotate(-90 18 ${T + plotH / 2})">TPS (pgbench)</text>`);
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (Number.isFinite(v) ? `${x(i)},${y(v)}` : null)).filter((p): p is string => p !== null);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${dash} points="${pts.join(' ')}"/>`);
    for (const p of pts) { const [px, py] = p.split(','); out.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${s.color}"/>`); }
    const ly = T + 10 + k * 20;
    out.push(`<line x1="${L + plotW + 15}" y1="${ly}" x2="${L + plotW + 40}" y2="${ly}" stroke="${s.color}" stroke-width="2"${dash}/>`,
      `<text x="${L + plotW + 45}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
