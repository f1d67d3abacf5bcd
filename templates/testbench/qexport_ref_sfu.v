// qexport behavioural reference SFU: one conv's psums to the next conv's x_int by integer
// thresholds (README "Integer inference (SFU thresholds)"), COLS output channels a word.
// Not synthesizable; it is what `qexport testbench --sfu` checks the requant files with. Replace it
// with your SFU: tb.sv drives these ports and nothing else.
//
// Per channel (lane) c, with its direction d[c] and thresholds T[0..LEVELS-1][c]:
//   d =  1   x = count(psum >= T[k])   (T ascending)
//   d = -1   x = count(psum <= T[k])   (T descending)
//   d =  0   a constant channel: its thresholds are written so that count(psum >= T[k]) gives it
// The max-pool of the chain (if any) is not here: it runs on the thresholded x_int (exact, the
// quantiser is monotone), and tb.sv does it over a tile's pixels.
//
// Interface (inputs sampled on the rising edge of clk; tb.sv changes them just after a falling edge):
//   t_we, t_level (k, 0..LEVELS-1), t_data   one word of the threshold file: threshold k of every
//            channel, COLS signed lanes of T_BITS, channel 0 in the low bits
//   d_we, d_data   the direction file's word: COLS signed 2-bit lanes (1, -1 or 0)
//   psum_in  COLS signed lanes of PSUM_BITS: a pixel's accumulated psums BEFORE ReLU (the reference
//            core's psum_data)
//   x_out    COLS unsigned lanes of X_BITS: the next conv's x_int of that pixel (before the pool)
// Latency: one clock. tb.sv sets psum_in after a falling edge and samples x_out at the next
// falling edge, so x_out may be registered on the rising edge in between (as here) or be
// combinational. The tables are loaded (once per output-channel tile) before any psum_in.
`timescale 1ns/1ps
module qexport_ref_sfu #(
    parameter COLS = 8,
    parameter PSUM_BITS = 16,
    parameter T_BITS = 17,
    parameter LEVELS = 15,
    parameter X_BITS = 4
) (
    input  wire clk,
    input  wire t_we,
    input  wire [15:0] t_level,
    input  wire [COLS*T_BITS-1:0] t_data,
    input  wire d_we,
    input  wire [COLS*2-1:0] d_data,
    input  wire [COLS*PSUM_BITS-1:0] psum_in,
    output reg  [COLS*X_BITS-1:0] x_out
);
    reg [COLS*T_BITS-1:0] table_t [0:LEVELS-1];
    reg [COLS*2-1:0] table_d;

    integer c, k, count;
    reg signed [63:0] p, t;
    reg signed [1:0] d;

    always @(posedge clk) begin
        if (t_we) table_t[t_level] <= t_data;
        if (d_we) table_d <= d_data;
        for (c = 0; c < COLS; c = c + 1) begin
            p = $signed(psum_in[c*PSUM_BITS +: PSUM_BITS]);
            d = $signed(table_d[c*2 +: 2]);
            count = 0;
            for (k = 0; k < LEVELS; k = k + 1) begin
                t = $signed(table_t[k][c*T_BITS +: T_BITS]);
                if (d == -2'sd1) begin
                    if (p <= t) count = count + 1;
                end else if (p >= t) begin
                    count = count + 1;
                end
            end
            x_out[c*X_BITS +: X_BITS] <= count[X_BITS-1:0];
        end
    end
endmodule
