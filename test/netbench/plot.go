package netbench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one line of a plot.
type Series struct {
	Name   string
	X, Y   []float64
	Color  color.RGBA
	Dashed bool
}

// Plot draws series as lines with markers on linear axes from 0, with a legend, into a PNG.
func Plot(path, title, xLabel, yLabel string, xTicks []float64, series []Series) error {
	const w, h = 760, 460
	const left, right, top, bottom = 70, 20, 40, 60
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	xmax, ymax := 0.0, 0.0
	for _, s := range series {
		for i := range s.X {
			xmax, ymax = math.Max(xmax, s.X[i]), math.Max(ymax, s.Y[i])
		}
	}
	for _, t := range xTicks {
		xmax = math.Max(xmax, t)
	}
	ystep := niceStep(ymax / 5)
	ymax = math.Ceil(ymax*1.05/ystep) * ystep
	if ymax == 0 {
		ymax, ystep = 1, 0.2
	}
	px := func(x float64) int { return left + int(x/xmax*float64(w-left-right)) }
	py := func(y float64) int { return h - bottom - int(y/ymax*float64(h-top-bottom)) }
	grey, black := color.RGBA{220, 220, 220, 255}, color.RGBA{0, 0, 0, 255}
	for y := 0.0; y <= ymax+ystep/2; y += ystep {
		line(img, px(0), py(y), px(xmax), py(y), grey, false)
		text(img, left-8-7*len(fmtNum(y)), py(y)+4, fmtNum(y), black)
	}
	for _, x := range xTicks {
		line(img, px(x), py(0), px(x), py(ymax), grey, false)
		text(img, px(x)-3*len(fmtNum(x)), h-bottom+16, fmtNum(x), black)
	}
	line(img, px(0), py(0), px(xmax), py(0), black, false)
	line(img, px(0), py(0), px(0), py(ymax), black, false)
	text(img, (w-7*len(title))/2, 22, title, black)
	text(img, (w-7*len(xLabel))/2, h-18, xLabel, black)
	text(img, 8, top-12, yLabel, black)
	for si, s := range series {
		for i := range s.X {
			if i > 0 {
				line(img, px(s.X[i-1]), py(s.Y[i-1]), px(s.X[i]), py(s.Y[i]), s.Color, s.Dashed)
			}
			square(img, px(s.X[i]), py(s.Y[i]), s.Color)
		}
		ly := top + 8 + 18*si
		line(img, w-right-190, ly, w-right-160, ly, s.Color, s.Dashed)
		text(img, w-right-152, ly+4, s.Name, black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// line draws with Bresenham's algorithm, two pixels thick.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA, dashed bool) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for n := 0; ; n++ {
		if !dashed || (n/6)%2 == 0 {
			img.SetRGBA(x0, y0, c)
			img.SetRGBA(x0, y0+1, c)
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func square(img *image.RGBA, x, y int, c color.RGBA) {
	for i := -3; i <= 3; i++ {
		for j := -3; j <= 3; j++ {
			img.SetRGBA(x+i, y+j, c)
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
